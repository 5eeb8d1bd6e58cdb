"""The unified autoregressive model: shared vocabulary, Llama-style transformer, sampling and SJD."""

from onetok.ar_model.model import PRESETS, ARConfig, KVCache, Transformer, config_from_preset
from onetok.ar_model.vocab import ByteText, Vocab, WordText

__all__ = ["PRESETS", "ARConfig", "ByteText", "KVCache", "Transformer", "Vocab", "WordText", "config_from_preset"]
