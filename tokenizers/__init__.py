"""The 1D discrete image tokenizer (TiTok/FlexTok-style): `Tokenizer`, `TokenizerConfig`, size `PRESETS`.

The names are loaded from `onetok.tokenizers.model` on first use, so that importing a torch-free sibling
(`codec`, `registry`, `domain`) does not load torch: `onetok` checks paths and flags before that.
"""

import importlib

__all__ = ["PRESETS", "Tokenizer", "TokenizerConfig", "preset"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("onetok.tokenizers.model"), name)
    raise AttributeError(f"module 'onetok.tokenizers' has no attribute {name!r}")
