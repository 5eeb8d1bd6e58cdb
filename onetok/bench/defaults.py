"""The defaults of every benchmark and of the GPU check, in one torch-free place: the library functions take them as
default arguments and the command-line help texts format them in (`onetok --help` imports no torch)."""

from __future__ import annotations

# onetok bench kernels: nearest-code grids (N rows, K codes, D dims) and SJD verify cases (B, W, V)
KERNEL_FULL_GRID = {"N": [4096, 65536, 262144], "K": [1024, 4096, 16384, 65536], "D": [8, 12, 16, 32, 64]}
KERNEL_QUICK_GPU_GRID = {"N": [65536], "K": [4096, 16384], "D": [8, 16, 64]}
KERNEL_CPU_GRID = {"N": [4096, 16384], "K": [1024, 4096], "D": [16]}
SJD_VERIFY_FULL = [(1, 16, 32768), (8, 16, 32768), (8, 32, 32768), (32, 16, 32768)]
SJD_VERIFY_CPU = [(1, 16, 4096), (8, 16, 4096), (8, 16, 32768)]
KERNEL_REPEATS = {"cuda": 10, "cpu": 3}  # timed runs per case
KERNEL_DTYPES = {"cuda": "fp32,bf16", "cpu": "fp32"}
KERNEL_METRICS = "euclidean"
PEAK_MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}  # the square matmul the peak rates are measured with

# onetok bench tokenizer
TOKENIZER_PRESET = "titok-s-128"
TOKENIZER_BATCH = {"cpu": 4, "cuda": 64}
TOKENIZER_ROUNDS = 5
TOKENIZER_MIN_CUDA_ROUNDS = 10

# onetok bench sjd
SJD_PROMPTS = 8
SJD_BATCH = 1

# onetok bench data
DATA_SIZES = [10000, 40000, 160000]
DATA_TOKENS = 128
DATA_CODEBOOK = 4096
DATA_RANKS = 2
DATA_WORKERS = 0
DATA_BATCH = 64
DATA_BUFFER = 10000

# onetok bench startup
STARTUP_RUNS = 5
STARTUP_ERROR_TARGET_S = 0.5  # --help and argument / path errors
STARTUP_WORK_TARGET_S = 2.5  # caption or compress one photo

# the GPU check
GPU_CHECK_DEADLINE_S = 450.0  # the driver's own limit; gpu_check.sh kills it 30 s later
