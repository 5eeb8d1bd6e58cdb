"""The unified model: AR transformer + shared vocabulary + image tokenizer, saved together in one directory.

    DIR/config.json        {"format": "onetok-unified", "version": 1, "model": ARConfig dict, "vocab": Vocab dict,
                            "tokenizer_fingerprint": hex of onetok.tokenizers.registry.fingerprint, checked on load,
                            "sampling": the recommended SamplingSettings (absent: generate.DEFAULT_SETTINGS)}
    DIR/model.safetensors  transformer weights
    DIR/tokenizer/         a Tokenizer directory (config.json + model.safetensors)
    DIR/text_vocab.model   a sentencepiece text vocabulary, when the vocabulary has one (config.json names the file),
    DIR/text_vocab.words   and the words of its training captions (to name a prompt's unseen words)

`generate_images` draws images from text prompts (plain KV-cache sampling or speculative Jacobi decoding) and
`caption` describes images; the directory alone is enough for both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from onetok.ar_model.generate import DEFAULT_SETTINGS, SamplingSettings, generate_image_tokens, generate_text
from onetok.ar_model.model import ARConfig, Transformer
from onetok.ar_model.sjd import generate_image_tokens_sjd
from onetok.ar_model.vocab import SPM_FILE, SentencePieceText, Vocab
from onetok.sampling_defaults import SJD_WINDOW
from onetok.tokenizers import Tokenizer
from onetok.tokenizers.registry import fingerprint

FORMAT, VERSION = "onetok-unified", 1
BUILTIN_MODEL = Path(__file__).resolve().parent / "pretrained" / "cifar10"  # the built-in natural-image model


class ImageResult(NamedTuple):
    images: torch.Tensor  # (B, 3, S, S) in [0, 1], B = len(prompts) * n_per_prompt, prompt-major
    codes: torch.Tensor  # (B, k) tokenizer code ids
    forward_passes: int  # AR forward passes for the whole batch, prefill included
    tokens_per_pass: list[int] | None  # SJD only: tokens each unfinished row gained per verify pass


class UnifiedModel(nn.Module):
    """Text -> image and image -> text with one transformer over `vocab`, images through `tokenizer`."""

    def __init__(self, transformer: Transformer, vocab: Vocab, tokenizer: Tokenizer,
                 settings: SamplingSettings = DEFAULT_SETTINGS):
        super().__init__()
        if transformer.config.vocab_size != vocab.size:
            raise ValueError(f"transformer vocab_size {transformer.config.vocab_size} != vocab size {vocab.size}")
        if tokenizer.codebook_size != vocab.codebook_size:
            raise ValueError(f"tokenizer codebook {tokenizer.codebook_size} != vocab codebook {vocab.codebook_size}")
        self.transformer, self.vocab, self.tokenizer = transformer.eval(), vocab, tokenizer.eval()
        self.settings = settings  # the recommended sampling settings, saved with the model

    @property
    def device(self) -> torch.device:
        return self.transformer.output.weight.device

    # --- persistence ----------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> UnifiedModel:
        from safetensors.torch import load_model

        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: not a unified model directory (no config.json)")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{config_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise ValueError(f"{config_path}: version {meta.get('version')} is not supported (expected {VERSION})")
        transformer = Transformer(ARConfig(**meta["model"]))
        load_model(transformer, str(directory / "model.safetensors"), device=str(map_location))
        tokenizer = Tokenizer.from_pretrained(directory / "tokenizer", map_location=map_location)
        _check_tokenizer(tokenizer, meta.get("tokenizer_fingerprint"), directory / "tokenizer")
        settings = SamplingSettings(**meta.get("sampling", dataclasses.asdict(DEFAULT_SETTINGS)))
        return cls(transformer, _load_vocab(meta["vocab"], directory), tokenizer, settings).to(map_location)

    def save_pretrained(self, directory: str | os.PathLike, force: bool = False, inputs=()) -> Path:
        """Write the directory under the exporter contract (`onetok.export.export_folder`): built beside it, renamed
        into place when complete, replacing an existing one only with `force` and only when onetok wrote it."""
        from onetok.export import export_folder

        return export_folder(directory, self.write_into, force, inputs)

    def write_into(self, folder: Path) -> None:
        """config.json, model.safetensors, the text vocabulary and tokenizer/ into the (new, empty) `folder`."""
        from safetensors.torch import save_model

        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model": dataclasses.asdict(self.transformer.config),
            "vocab": _save_vocab(self.vocab, folder),
            "tokenizer_fingerprint": fingerprint(self.tokenizer).hex(),
            "sampling": dataclasses.asdict(self.settings),
        }
        (folder / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        save_model(self.transformer, str(folder / "model.safetensors"), metadata={"format": FORMAT})
        self.tokenizer.save_pretrained(folder / "tokenizer")

    # --- text -> image ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_images(
        self,
        prompts: list[str],
        n_per_prompt: int = 1,
        settings: SamplingSettings | None = None,
        image_tokens: int | None = None,
        seed: int = 0,
        sjd: bool = False,
        window: int = SJD_WINDOW,
        init: str = "uniform",
    ) -> ImageResult:
        """Images (len(prompts) * n_per_prompt, 3, S, S) from `image_tokens` (1..L, default L) codes each, sampled
        plainly or with SJD (`sjd`, its `window` and draft `init`: the same distribution)."""
        settings = settings or self.settings
        L = self.tokenizer.num_latent_tokens
        k = L if image_tokens is None else int(image_tokens)
        if not 1 <= k <= L:
            raise ValueError(f"image_tokens must be in 1..{L}, got {k}")
        if not prompts or n_per_prompt < 1:
            raise ValueError("need at least one prompt and n_per_prompt >= 1")
        prompt_ids = [self.vocab.encode_text(p) for p in prompts for _ in range(n_per_prompt)]
        longest = max(len(p) for p in prompt_ids) + 2 + k
        if longest > self.transformer.config.max_seq_len:
            raise ValueError(f"prompt + {k} image tokens = {longest} tokens > max_seq_len "
                             f"{self.transformer.config.max_seq_len}")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if sjd:
            out = generate_image_tokens_sjd(self.transformer, self.vocab, prompt_ids, k, settings, generator,
                                            window=window, init=init)
            codes, passes, per_pass = out.codes, out.forward_passes, out.tokens_per_pass
        else:
            codes, passes = generate_image_tokens(self.transformer, self.vocab, prompt_ids, k, settings, generator)
            per_pass = None
        return ImageResult(self.tokenizer.decode(codes), codes, passes, per_pass)

    # --- image -> text ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int = 64, greedy: bool = True, seed: int = 0) -> list[str]:
        """Captions for images (B, 3, S, S) in [0, 1]; greedy by default, else sampled at temperature 1."""
        codes = self.tokenizer.encode(images.to(self.device))  # (B, L)
        max_len = max(1, min(max_len, self.transformer.config.max_seq_len - codes.shape[1] - 3))
        settings = SamplingSettings(temperature=0.0 if greedy else 1.0)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        result = generate_text(self.transformer, self.vocab, codes, max_len, settings, generator)
        return [self.vocab.decode_text(ids) for ids in result.ids]


def _save_vocab(vocab: Vocab, directory: Path) -> dict:
    """The vocabulary's dict for config.json; a sentencepiece model goes into its own file beside it."""
    d = vocab.to_dict()
    if isinstance(vocab.text, SentencePieceText):
        vocab.text.save(directory / SPM_FILE)
        d["text"] = {"kind": vocab.text.kind, "file": SPM_FILE, "sha256": vocab.text.sha256()}
    return d


def _load_vocab(d: dict, directory: Path) -> Vocab:
    if d["text"].get("file"):
        text = SentencePieceText.load(directory / d["text"]["file"])
        if text.sha256() != d["text"]["sha256"]:
            raise ValueError(f"{directory / d['text']['file']}: not the text vocabulary this model was trained with")
        d = {**d, "text": text.to_dict()}
    return Vocab.from_dict(d)


def _check_tokenizer(tokenizer: Tokenizer, expected: str | None, path: Path) -> None:
    """The tokenizer/ folder must hold the tokenizer the model was saved with (models saved before the fingerprint
    was recorded are not checked)."""
    if expected and fingerprint(tokenizer).hex() != expected:
        raise ValueError(f"{path}: not the tokenizer this model was trained with (fingerprint "
                         f"{fingerprint(tokenizer).hex()[:12]}, the model expects {expected[:12]})")
