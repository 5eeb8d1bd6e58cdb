"""What `onetok-train` checks before the Trainer starts, so that a mistake costs one line and exit code 2 -- no
traceback, no `lightning_logs/version_N/` left behind:

- `--config NAME` also takes the name of a config shipped with onetok (`tokenizer/shapes`, `ar/shapes`, or a bare
  name such as `titok_s128` when only one folder has it), so the command works from any folder: the YAML files are
  installed with the package (`onetok/configs/`);
- argument errors (an unknown key, a wrong preset, a bad value) are reported by jsonargparse, condensed to one line;
- the data a config names is checked before anything is built: every shard spec must match readable `.tar` files,
  a token folder needs its meta.json, a tokenizer folder its config.json and model.safetensors;
- noise is dropped: Lightning's "litlogger" tip, and the progress bar when stderr is not a terminal (a log file keeps
  its carriage returns as one endless line).
"""

from __future__ import annotations

import logging
import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import onetok.data
from onetok.fileio import UserError

# onetok.data is installed from its own folder (data/), which sits beside configs/ in the checkout and in an install
CONFIG_DIR = Path(onetok.data.__file__).resolve().parents[1] / "configs"  # repo: configs/; installed: onetok/configs/


# --------------------------------------------------------------------------------------------------------------------
# Shipped configs
# --------------------------------------------------------------------------------------------------------------------


def shipped_configs() -> dict[str, Path]:
    """"tokenizer/shapes" -> its YAML file, for every config shipped with onetok."""
    return {p.relative_to(CONFIG_DIR).with_suffix("").as_posix(): p for p in sorted(CONFIG_DIR.glob("*/*.yaml"))}


def resolve_config(name: str) -> str:
    """A --config value: an existing file as it is, else the shipped config of that name."""
    if Path(name).is_file():
        return name
    configs = shipped_configs()
    key = name.removeprefix("configs/").removesuffix(".yaml")
    if key in configs:
        return str(configs[key])
    matches = [k for k in configs if k.split("/")[-1] == key]
    if len(matches) == 1:
        return str(configs[matches[0]])
    if len(matches) > 1:
        raise UserError(f"--config {name}: ambiguous, say which: {' or '.join(matches)}")
    raise UserError(f"--config {name}: no such file, and not a config shipped with onetok "
                    f"(choose from {', '.join(configs)})")


def resolve_config_args(argv: list[str]) -> list[str]:
    """argv with every `--config NAME` / `-c NAME` / `--config=NAME` resolved by `resolve_config`."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


# --------------------------------------------------------------------------------------------------------------------
# Data and folders named by the config
# --------------------------------------------------------------------------------------------------------------------


def _is_local(spec: str) -> bool:
    return not any(spec.startswith(p) for p in ("pipe:", "http://", "https://", "s3://", "gs://"))


def check_shards(key: str, spec) -> None:
    """Every shard of `spec` (a folder, glob, brace pattern or list) exists and starts as a tar archive."""
    from onetok.data.shards import expand_shards

    if isinstance(spec, str) and not _is_local(spec):
        return
    paths = expand_shards(spec)
    if not paths:
        raise UserError(f"--{key} {spec}: no shards (.tar files) there")
    for path in paths:
        if not _is_local(path):
            continue
        if not os.path.isfile(path):
            raise UserError(f"--{key}: {path}: no such shard")
        try:
            with tarfile.open(path) as tar:
                tar.next()
        except (OSError, tarfile.TarError) as err:
            raise UserError(f"--{key}: {path}: not a readable tar shard ({type(err).__name__})") from None


def check_folder(key: str, path, needs: tuple[str, ...], hint: str) -> None:
    missing = [name for name in needs if not (Path(path) / name).is_file()]
    if missing:
        raise UserError(f"--{key} {path}: {hint} (no {missing[0]})")


def check_config(config) -> None:
    """The data, token and tokenizer folders a parsed config (one subcommand's namespace) names."""
    for section in ("data", "model"):
        node = config.get(section) if hasattr(config, "get") else None
        args = node.get("init_args") if node is not None and hasattr(node, "get") else None
        if args is None:
            continue
        for name, value in vars(args).items():
            if value is None or value == "":
                continue
            key = f"{section}.init_args.{name}"
            if name.endswith("shards") or (name == "images" and section == "data"):
                check_shards(key, value)
            elif name == "tokens":
                check_folder(key, value, ("meta.json",), "not a token folder (make one with `onetok tokenize`)")
            elif name in ("tokenizer", "tokenizer_dir"):
                check_folder(key, value, ("config.json", "model.safetensors"), "not a tokenizer folder")


def check_enough_samples(datamodule, trainer) -> None:
    """Refuse, before Lightning creates `lightning_logs/`, a fit whose ranks get fewer training samples than a batch:
    training drops the last partial batch, so such a run would train on nothing. Data sets of unknown length (resampled
    shard streams) are not checked. The data module's `setup` is guarded, so Lightning's own call reuses its work."""
    batch_size = getattr(datamodule, "batch_size", None)
    if datamodule is None or not isinstance(batch_size, int):
        return
    datamodule.setup("fit")
    try:
        samples = len(datamodule.train_dataloader().dataset)
    except TypeError:  # an iterable without a length
        return
    world = max(1, int(getattr(trainer, "world_size", 1) or 1))
    if samples // world < batch_size:
        per_rank = f" ({samples // world} per rank on {world} ranks)" if world > 1 else ""
        raise UserError(f"--data.init_args.batch_size {batch_size}: only {samples} training samples{per_rank}, fewer "
                        "than one batch (a partial last batch is dropped): lower the batch size or add data")


def quiet_progress(config) -> None:
    """No progress bar when stderr is not a terminal, unless the config asks for one."""
    trainer = config.get("trainer") if hasattr(config, "get") else None
    if trainer is not None and trainer.get("enable_progress_bar") is None and not sys.stderr.isatty():
        trainer["enable_progress_bar"] = False


def before_instantiate(config) -> None:
    """LightningCLI.before_instantiate_classes: everything above, before any class is built."""
    check_config(config)
    quiet_progress(config)


# --------------------------------------------------------------------------------------------------------------------
# One-line errors
# --------------------------------------------------------------------------------------------------------------------

_NOISE = ("Expected a <class 'NoneType'>", "Given value", "Subtypes:", "Errors:", "Does not validate against",
          "- Expected a", "tip: For details")


def condense(message: str) -> str:
    """jsonargparse's nested error message -> its most specific line (the innermost reason)."""
    lines = [_unquote(line.strip().lstrip("-").strip()) for line in str(message).splitlines()]
    useful = [line for line in lines if line and not line.startswith(_NOISE)]
    if not useful:
        return " ".join(lines)[:300]
    head, reason = useful[0], useful[-1]
    return reason if reason == head else f"{head.rstrip(':')}: {reason}"


def _unquote(line: str) -> str:
    return line[1:-1] if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'" else line


class _DropTip(logging.Filter):
    """Lightning's advertisement for litlogger, and "Seed set to 0" (the seed is in the saved config.yaml)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "litlogger" not in message and not message.startswith("Seed set to")


def quiet_lightning() -> None:
    """The filter on every logger Lightning's rank-zero messages go through (which one depends on import order)."""
    drop = _DropTip()
    for package in ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        for module in ("utilities.rank_zero", "utilities.seed"):
            logger = logging.getLogger(f"{package}.{module}")
            if not any(isinstance(f, _DropTip) for f in logger.filters):
                logger.addFilter(drop)


PARSER_KWARGS = {"exit_on_error": False, "fit": {"exit_on_error": False}, "validate": {"exit_on_error": False},
                 "test": {"exit_on_error": False}, "predict": {"exit_on_error": False}}


def run(build: Callable[[], object], argv: list[str] | None) -> int:
    """Run `build()` (which makes the LightningCLI) with --config names resolved; every user error -> one line on
    stderr and exit code 2. `argv` None means the command line (sys.argv is rewritten in place)."""
    from jsonargparse import ArgumentError

    quiet_lightning()
    try:
        if argv is None:
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        elif isinstance(argv, list):
            argv[:] = resolve_config_args([str(a) for a in argv])
        build()
    except UserError as err:
        return _fail(str(err))
    except (ArgumentError, ValueError) as err:  # also jsonargparse's errors when it builds the classes
        if os.environ.get("ONETOK_DEBUG"):
            raise
        return _fail(condense(str(err)) or type(err).__name__)
    except OSError as err:  # data errors met by Lightning after the checks (a shard corrupt inside)
        return _fail(" ".join(str(err).split()) or type(err).__name__)
    except KeyboardInterrupt:
        print("onetok-train: interrupted (the last checkpoint, if any, is kept: --ckpt_path resumes)", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # --help, --print_config
        return int(exit_.code or 0) if isinstance(exit_.code, int) or exit_.code is None else _fail(str(exit_.code))
    return 0


def _fail(message: str) -> int:
    print(f"onetok-train: error: {message}", file=sys.stderr)
    return 2
