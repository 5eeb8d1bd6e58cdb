"""Which tokenizer and prior decode an `.otok` file: the folders given, or those found by the fingerprints the file
carries (built in, or registered by `onetok export`). Torch-free: nothing is loaded here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from onetok.tokenizers import registry


class UnknownModel(ValueError):
    """A file names a tokenizer or prior that was not given and is neither built in nor registered."""


class ModelFolders(NamedTuple):
    tokenizer: Path
    prior: Path | None  # None for a bit-packed file


def find_models(path: str | os.PathLike, fingerprint: bytes, prior_fingerprint: bytes | None,
                tokenizer_dir: str | os.PathLike | None = None,
                prior_dir: str | os.PathLike | None = None) -> ModelFolders:
    """The folders that decode the file `path` (named in the errors): `tokenizer_dir` or the tokenizer with
    `fingerprint`; for an entropy-coded file `prior_dir` or the prior with `prior_fingerprint`. UnknownModel when one
    is not found."""
    folder = Path(tokenizer_dir) if tokenizer_dir else registry.find_tokenizer(fingerprint.hex())
    if folder is None:
        raise UnknownModel(f"{path}: made with tokenizer {fingerprint.hex()[:12]}, which is neither built in nor "
                           f"registered in {registry.registry_dir()}; pass --tokenizer DIR")
    if prior_fingerprint is None:
        return ModelFolders(folder, None)
    prior = Path(prior_dir) if prior_dir else registry.find_prior(prior_fingerprint.hex(),
                                                                 [registry.prior_beside(folder)])
    if prior is None:
        raise UnknownModel(f"{path}: entropy-coded with prior {prior_fingerprint.hex()[:12]}, which is not beside any "
                           "known tokenizer; pass --prior DIR")
    return ModelFolders(folder, prior)
