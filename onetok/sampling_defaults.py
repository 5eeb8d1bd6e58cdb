"""The sampling defaults, in one torch-free place: the library's `DEFAULT_SETTINGS` and SJD window are built from
them, and the `onetok` help texts format them (the parsers must not import torch)."""

TEMPERATURE = 0.7  # the recommended settings of a model exported without its own (the shapes recipe; docs/benchmarks.md)
CFG_SCALE = 2.0  # classifier-free guidance
SJD_WINDOW = 16  # draft tokens verified per forward pass by speculative Jacobi decoding (docs/sjd.md)
