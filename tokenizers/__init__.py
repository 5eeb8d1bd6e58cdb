"""The 1D discrete image tokenizer (TiTok/FlexTok-style): `Tokenizer`, `TokenizerConfig`, size `PRESETS`."""

from onetok.tokenizers.model import PRESETS, Tokenizer, TokenizerConfig, preset

__all__ = ["PRESETS", "Tokenizer", "TokenizerConfig", "preset"]
