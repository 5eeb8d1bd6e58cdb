"""onetok: a 1D discrete image tokenizer and a unified autoregressive model over one shared vocabulary."""

__version__ = "0.1.0"
