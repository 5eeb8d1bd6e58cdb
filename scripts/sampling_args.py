"""The sampling flags and the prompts of `onetok sample` and `onetok eval-ar`: each flag checked under the name the
user typed (before any model loads), prompts normalised for word vocabularies (case, punctuation) and fitted to the
model's context, unknown words answered with the words the model knows."""

from __future__ import annotations

import argparse

from onetok.fileio import UserError
from onetok.sampling_defaults import CFG_SCALE, TEMPERATURE
from onetok.scripts.arg_types import finite_float, seed


def check_sampling_flags(args: argparse.Namespace) -> None:
    """The sampling flags, named as the user typed them (before any model is loaded)."""
    if args.cfg is not None and not args.cfg >= 0:
        raise UserError(f"--cfg {args.cfg}: must be >= 0 (1 = no guidance, 0 = unconditional)")
    if args.temperature is not None and not args.temperature >= 0:
        raise UserError(f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
    if args.top_k is not None and args.top_k < 0:
        raise UserError(f"--top-k {args.top_k}: must be >= 0 (0 = all codes)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.image_tokens is not None and args.image_tokens < 1:
        raise UserError(f"--image-tokens {args.image_tokens}: must be at least 1")


def sampling_settings(args: argparse.Namespace, recommended=None):
    """The model's recommended settings (`UnifiedModel.settings`, else the library default), each flag given
    replacing its field."""
    from onetok.ar_model.generate import DEFAULT_SETTINGS, SamplingSettings

    check_sampling_flags(args)
    d = recommended or DEFAULT_SETTINGS
    return SamplingSettings(
        temperature=d.temperature if args.temperature is None else args.temperature,
        top_k=d.top_k if args.top_k is None else (args.top_k or None),
        top_p=d.top_p if args.top_p is None else args.top_p,
        cfg_scale=d.cfg_scale if args.cfg is None else args.cfg,
    )


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    # the library default (ar_model.generate.DEFAULT_SETTINGS) is built from onetok.sampling_defaults, torch-free
    p.add_argument("--cfg", type=finite_float, default=None, metavar="S", help="classifier-free guidance scale, >= 0 "
                   f"(default: the model's, else {CFG_SCALE:g}; 1 = off, 0 = unconditional)")
    p.add_argument("--temperature", type=finite_float, default=None, metavar="T", help="sampling temperature, >= 0 "
                   f"(default: the model's, else {TEMPERATURE:g}; 0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="keep the K most likely codes (default: all; 0 = all)")
    p.add_argument("--top-p", type=finite_float, default=None, metavar="P", help="nucleus sampling mass in (0, 1] "
                                                                           "(default: off)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default %(default)s); prompt i draws with seed + i")
    p.add_argument("--image-tokens", type=int, default=None, metavar="K",
                   help="draw only the first K of the tokenizer's L tokens per image (coarser images; default L)")


def check_image_tokens(model, k: int | None) -> None:
    L = model.tokenizer.num_latent_tokens
    if k is not None and not 1 <= k <= L:
        raise UserError(f"--image-tokens {k}: must be in 1..{L} (L, this model's tokens per image)")


def normalize_prompt(vocab, prompt: str) -> str:
    """For a word vocabulary: the prompt in the case and without the punctuation of its words ("A red circle." ->
    "a red circle"); other vocabularies read the text as it is."""
    words = getattr(vocab.text, "words", None)
    if words is None:
        return prompt
    known = set("".join(words))
    if all(w == w.lower() for w in words):
        prompt = prompt.lower()
    return " ".join("".join(c for c in w if c in known or c.isalnum()) for w in prompt.split())


def prompt_length(model, prompt: str, what: str = "prompt") -> int:
    """The number of text tokens of `prompt`; UserError naming unknown words and the known ones."""
    try:
        return len(model.vocab.encode_text(prompt))
    except ValueError as err:
        words = getattr(model.vocab.text, "words", None)
        known = ""
        if words is not None:
            shown = sorted(words)[:60]
            known = f"; the model knows: {', '.join(shown)}" + (", ..." if len(words) > len(shown) else "")
        raise UserError(f"{what} {prompt!r}: {err}{known}") from None


def check_prompts(model, prompts: list[str], image_tokens: int | None) -> list[str]:
    """The prompts normalised for the model's vocabulary, each checked to fit its context with the image tokens."""
    k = image_tokens or model.tokenizer.num_latent_tokens
    room = model.transformer.config.max_seq_len - 2 - k  # <bos>/<boi> markers, then k image tokens
    out = []
    for prompt in prompts:
        given, prompt = prompt, normalize_prompt(model.vocab, prompt)
        n = prompt_length(model, prompt)
        if n == 0:  # it would draw an unconditional image
            raise UserError(f"prompt {given[:60]!r}: no text this model reads (only punctuation or symbols); to draw "
                            "without a prompt, use --cfg 0")
        if n > room:
            raise UserError(f"prompt {prompt[:60]!r}{'...' if len(prompt) > 60 else ''}: {n} text tokens, but this "
                            f"model takes at most {room} (its context of {model.transformer.config.max_seq_len} "
                            f"tokens holds the prompt, 2 markers and {k} image tokens)")
        out.append(prompt)
    return out
