"""The unified autoregressive model: shared vocabulary, Llama-style transformer, sampling and SJD."""

from onetok.ar_model.generate import (
    GenerationResult,
    SamplingSettings,
    cfg_logits,
    decode_step,
    generate_image_tokens,
    generate_text,
    prefill,
    process_logits,
    sample_from_logits,
)
from onetok.ar_model.model import PRESETS, ARConfig, KVCache, Transformer, config_from_preset
from onetok.ar_model.sjd import SJDResult, generate_image_tokens_sjd
from onetok.ar_model.unified import ImageResult, UnifiedModel
from onetok.ar_model.vocab import ByteText, Vocab, WordText

__all__ = [
    "PRESETS",
    "ARConfig",
    "ByteText",
    "GenerationResult",
    "ImageResult",
    "KVCache",
    "SJDResult",
    "SamplingSettings",
    "Transformer",
    "UnifiedModel",
    "Vocab",
    "WordText",
    "cfg_logits",
    "config_from_preset",
    "decode_step",
    "generate_image_tokens",
    "generate_image_tokens_sjd",
    "generate_text",
    "prefill",
    "process_logits",
    "sample_from_logits",
]
