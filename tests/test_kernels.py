"""Kernels: Triton (run by the interpreter on CPU) against the pure-torch references, and the references
against brute force and against the SJD semantics. Block sizes are shrunk so small inputs still span many tiles."""

import importlib

import pytest
import torch

from onetok import kernels
from onetok.kernels import reference

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
tk_codebook = importlib.import_module("onetok.kernels.codebook")
tk_sjd = importlib.import_module("onetok.kernels.sjd_triton")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # where the Triton backend runs: compiled on CUDA, else the interpreter


def dev(*tensors):
    """Inputs for a Triton call on DEVICE."""
    moved = tuple(t.to(DEVICE) for t in tensors)
    return moved if len(moved) > 1 else moved[0]


def cpu(result):
    """A Triton result (tensor or NamedTuple of tensors) back on the CPU."""
    return result.cpu() if isinstance(result, torch.Tensor) else type(result)(*(t.cpu() for t in result))


# ---------------------------------------------------------------------------------------------------------------
# Nearest code
# ---------------------------------------------------------------------------------------------------------------


def brute_scores(z: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """(N, K) distances in float64: squared euclidean, or 1 - cos."""
    z, c = z.double(), codebook.double()
    if metric == "cosine":
        return 1.0 - torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(c, dim=1).t()
    return (z[:, None, :] - c[None, :, :]).pow(2).sum(-1)


def assert_same_choice(got, want, z, codebook, metric, tol=1e-4):
    """Indices equal, except where the two picks are a near-tie in exact arithmetic; distances close."""
    scores = brute_scores(z, codebook, metric)  # (N, K)
    differ = got.indices != want.indices
    if differ.any():
        rows = differ.nonzero().squeeze(1)
        gap = (scores[rows, got.indices[rows]] - scores[rows, want.indices[rows]]).abs()
        assert (gap <= tol * (1 + scores[rows].abs().amax(1))).all(), f"rows {rows.tolist()} differ, gaps {gap}"
        assert differ.float().mean() < 0.01
    torch.testing.assert_close(got.distances, want.distances, rtol=1e-4, atol=1e-4)


SHAPES = [  # N, K, D, (block_n, block_k, block_d), split_k
    (1, 1, 1, (16, 16, 16), 1),
    (1, 5, 3, (16, 16, 16), 1),
    (7, 1, 8, (16, 16, 16), 1),
    (33, 70, 12, (16, 16, 16), 3),  # K split in three ranges that do not align with the tiles
    (100, 257, 17, (16, 32, 16), 1),  # two D chunks
    (130, 100, 40, (32, 16, 16), 2),  # three D chunks, two K splits
    (400, 700, 24, (None, None, None), None),  # default launch settings
]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("n,k,d,blocks,split_k", SHAPES)
def test_triton_nearest_code_matches_reference(n, k, d, blocks, split_k, metric):
    z, codebook = torch.randn(n, d) * 2 + 0.5, torch.randn(k, d)
    block_n, block_k, block_d = blocks
    got = cpu(tk_codebook.nearest_code(*dev(z, codebook), metric, block_n=block_n, block_k=block_k, block_d=block_d,
                                       split_k=split_k))
    want = reference.nearest_code(z, codebook, metric)
    assert got.indices.dtype == torch.int64 and got.distances.dtype == torch.float32
    assert got.indices.shape == got.distances.shape == (n,)
    assert_same_choice(got, want, z, codebook, metric)


def test_fp16_euclidean_takes_the_half_dot():
    """fp16 inputs multiply in fp16 (the tensor-core path; the interpreter runs fp16, not bf16)."""
    z, codebook = (torch.randn(70, 12) * 2).half(), torch.randn(90, 12).half()
    got = cpu(tk_codebook.nearest_code(*dev(z, codebook), block_n=16, block_k=32, split_k=2))
    want = reference.nearest_code(z, codebook)
    assert_same_choice(got, want, z.float(), codebook.float(), "euclidean")


def tie_problem(metric: str, n: int = 90, distinct: int = 6, k: int = 70, d: int = 5):
    """Integer-valued codes with many duplicates spread across tiles, so exact ties exist and every dot product
    is exact in fp32 whatever the summation order. Euclidean queries sit on codes and on midpoints between two
    codes (ties across distinct codes too); cosine duplicates are rescaled by powers of two (same direction,
    bit for bit, after normalising) and the distinct directions are pairwise non-parallel."""
    g = torch.Generator().manual_seed(1)
    for _ in range(1000):
        base = torch.randint(-3, 4, (distinct, d), generator=g).double()
        base[0] = base[1]  # a duplicate pair among the distinct ones too
        unit = torch.nn.functional.normalize(base, dim=1)
        cos = (unit @ unit.t()).fill_diagonal_(0.0)
        cos[0, 1] = cos[1, 0] = 0.0  # only pairs other than (i, i) and the planted (0, 1) must be non-parallel
        if base.abs().sum(1).min() > 0 and cos.abs().max() < 1 - 1e-6:
            break
    base = base.float()
    codebook = base[torch.randint(0, distinct, (k,), generator=g)]
    a, b = torch.randint(0, distinct, (2, n), generator=g)
    if metric == "cosine":
        codebook = codebook * 2.0 ** torch.randint(0, 3, (k, 1), generator=g).float()
        return base[a], codebook
    z = torch.where(torch.rand(n, 1, generator=g) < 0.5, base[a], (base[a] + base[b]) / 2)
    return z, codebook


def lowest_argmin(scores: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    best = scores.min(dim=1, keepdim=True).values
    is_best = scores <= best + tol
    return is_best.float().argmax(dim=1)  # first True


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ties_pick_lowest_index(metric, split_k):
    z, codebook = tie_problem(metric)
    scores = brute_scores(z, codebook, metric)
    want = lowest_argmin(scores)
    ties = scores <= scores.min(dim=1, keepdim=True).values + 1e-9
    assert (ties.sum(1) > 1).float().mean() > 0.5  # the problem really is full of ties
    ref = reference.nearest_code(z, codebook, metric)
    tri = cpu(tk_codebook.nearest_code(*dev(z, codebook), metric, block_n=16, block_k=16, split_k=split_k))
    assert torch.equal(ref.indices, want)
    assert torch.equal(tri.indices, want)
    wide = cpu(tk_codebook.nearest_code(*dev(z, codebook), metric, block_n=16, block_k=128))  # all ties in one tile
    assert torch.equal(wide.indices, want)


def round_tf32_exact(x: torch.Tensor) -> torch.Tensor:
    """x rounded to 11 significant bits, ties away from zero, computed in float64 (normal fp32 inputs)."""
    x = x.double()
    ulp = torch.ldexp(torch.ones_like(x), torch.frexp(x).exponent - 11)  # TF32 ulp at |x|
    return torch.sign(x) * torch.floor(x.abs() / ulp + 0.5) * ulp


def test_split_tf32_parts():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4000, generator=g) * 10.0 ** torch.randint(-6, 7, (4000,), generator=g)
    x[:4] = torch.tensor([1.0 + 2.0**-11, -(1.0 + 2.0**-11), 3.0, -0.5])  # exact ties round away from zero
    hi, lo = tk_codebook.split_tf32(x)
    assert torch.equal(hi.double(), round_tf32_exact(x))
    assert torch.equal(lo.double(), round_tf32_exact(x - hi))
    for part in (hi, lo):
        assert (part.view(torch.int32) & 0x1FFF).eq(0).all()  # 10 mantissa bits: exact TF32 operands
    assert ((hi.double() + lo.double() - x.double()).abs() <= x.double().abs() * 2.0**-22).all()
    assert hi[0] == 1.0 + 2.0**-10 and hi[1] == -(1.0 + 2.0**-10) and lo[2] == 0


@triton.jit
def _round_tf32_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, tk_codebook._round_tf32(x), mask=offs < n)


def test_in_kernel_tf32_rounding_matches_the_host_split():
    x = torch.randn(1000) * 10.0 ** torch.randint(-6, 7, (1000,))
    out = torch.empty_like(x)
    x_dev, out_dev = dev(x, out)
    _round_tf32_kernel[(1,)](x_dev, out_dev, x.numel(), BLOCK=1024)
    assert torch.equal(out_dev.cpu(), tk_codebook.split_tf32(x)[0])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_tf32x3_arithmetic_keeps_fp32_argmins(metric):
    """The split-precision dot, emulated on CPU with TF32 operands (products exact in fp32): exact ties and random
    problems pick what fp32 picks. A plain TF32 dot (hi parts only) is shown to be too coarse for this."""

    def tf32x3_scores(z, codebook, split=True):
        cosine = metric == "cosine"
        codes, bias = tk_codebook.prepare_codes(codebook, cosine, half=False)  # (2, K, D), (K,)
        if cosine:
            z = torch.nn.functional.normalize(z, dim=1, eps=1e-12)
        z_hi, z_lo = tk_codebook.split_tf32(z)
        if not split:
            return bias + z_hi @ codes[0].t()
        return bias + z_lo @ codes[0].t() + z_hi @ codes[1].t() + z_hi @ codes[0].t()

    z, codebook = tie_problem(metric)
    want = lowest_argmin(brute_scores(z, codebook, metric))
    assert torch.equal(lowest_argmin(tf32x3_scores(z, codebook), tol=0.0), want)
    z, codebook = torch.randn(3000, 12) * 2, torch.randn(512, 12)
    exact = brute_scores(z, codebook, metric) - (0 if metric == "cosine" else z.double().pow(2).sum(1, keepdim=True))
    exact = exact - (1 if metric == "cosine" else 0)  # the searched score: ||c||² - 2 z·c, or -cos
    fp32_error = (_fp32_scores(z, codebook, metric) - exact).abs().max()
    split_error = (tf32x3_scores(z, codebook) - exact).abs().max()
    plain_error = (tf32x3_scores(z, codebook, split=False) - exact).abs().max()
    assert split_error <= 2 * fp32_error < plain_error / 50  # as accurate as an fp32 matmul; TF32 alone is not
    fp32 = reference.nearest_code(z, codebook, metric)
    assert (tf32x3_scores(z, codebook).argmin(1) != fp32.indices).sum() <= 2  # only near-ties may differ


def _fp32_scores(z, codebook, metric):
    """The reference's fp32 scores (N, K)."""
    if metric == "cosine":
        nz, nc = (torch.nn.functional.normalize(t, dim=1, eps=1e-12) for t in (z, codebook))
        return -(nz @ nc.t())
    return torch.addmm((codebook * codebook).sum(1), z, codebook.t(), alpha=-2.0)


@pytest.mark.parametrize("row_min_per_tile", [False, True])
def test_autotuned_launch(monkeypatch, row_min_per_tile):
    """The CUDA default path (autotuner, grid from the chosen config, K split), run with a one-config autotuner."""
    one_config = [tk_codebook._config(16, 32, row_min_per_tile, 4)]
    tuned = triton.autotune(configs=one_config, key=tk_codebook._TUNING_KEY)(tk_codebook._nearest_code_kernel)
    monkeypatch.setattr(tk_codebook, "_tuned_kernel", tuned)
    monkeypatch.setattr(tk_codebook, "_interpreting", lambda: False)
    monkeypatch.setattr(tk_codebook, "_multiprocessors", lambda device: 8)
    monkeypatch.setattr(tk_codebook, "MIN_CODES_PER_SPLIT", 16)
    z, codebook = torch.randn(50, 12), torch.randn(70, 12)
    for metric in ("euclidean", "cosine"):
        got = cpu(tk_codebook.nearest_code(*dev(z, codebook), metric))
        assert_same_choice(got, reference.nearest_code(z, codebook, metric), z, codebook, metric)


def test_split_count():
    assert tk_codebook.split_count(65536, 16384, 132) == 1  # 512 row blocks fill an H100
    assert tk_codebook.split_count(128, 4096, 132) == 4  # one row block: as many splits as 1024-code ranges allow
    assert tk_codebook.split_count(4096, 65536, 132) == 9  # 32 row blocks: ~2 programs per multiprocessor
    assert tk_codebook.split_count(100, 500, 132) == 1


def test_block_sizes_below_16_are_refused():
    with pytest.raises(ValueError, match="block_d"):
        tk_codebook.nearest_code(*dev(torch.randn(4, 8), torch.randn(5, 8)), block_d=8)
    with pytest.raises(ValueError, match="block_k"):
        tk_codebook.nearest_code(*dev(torch.randn(4, 8), torch.randn(5, 8)), block_k=24)


def test_reference_matches_brute_force_across_chunks(monkeypatch):
    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", 50 * 37)  # 50-row chunks
    z, codebook = torch.randn(333, 9), torch.randn(37, 9)
    for metric in ("euclidean", "cosine"):
        got = reference.nearest_code(z, codebook, metric)
        scores = brute_scores(z, codebook, metric)
        want = reference.NearestCode(scores.argmin(1), scores.min(1).values.float())
        assert_same_choice(got, want, z, codebook, metric)


def test_nearest_code_leading_dims_strides_and_dtypes():
    z = torch.randn(24, 3, 10).transpose(0, 1)  # (3, 24, 10), non-contiguous
    codebook = torch.randn(10, 50).t()  # (50, 10), non-contiguous
    want = reference.nearest_code(z.contiguous(), codebook.contiguous())
    got = cpu(kernels.nearest_code(*dev(z, codebook), backend="triton"))
    assert got.indices.shape == (3, 24)
    assert torch.equal(got.indices, want.indices)
    idx, dist = kernels.nearest_code(z.double(), codebook, backend="torch")  # unpacks as a pair
    assert torch.equal(idx, want.indices) and dist.dtype == torch.float32
    assert kernels.nearest_code(*dev(torch.randn(0, 10), codebook), backend="triton").indices.shape == (0,)


def test_nearest_code_bad_input():
    with pytest.raises(ValueError, match="metric"):
        kernels.nearest_code(torch.randn(4, 3), torch.randn(5, 3), metric="l1")
    with pytest.raises(ValueError, match="D=3"):
        kernels.nearest_code(*dev(torch.randn(4, 2), torch.randn(5, 3)), backend="triton")
    with pytest.raises(ValueError, match="codebook"):
        kernels.nearest_code(torch.randn(4, 3), torch.randn(0, 3))


def test_backend_dispatch(monkeypatch):
    host, where = torch.zeros(1), torch.zeros(1, device=DEVICE)
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    assert kernels.resolve_backend("auto", host) == "torch"
    assert kernels.resolve_backend("auto", where) == ("triton" if CUDA else "torch")
    assert kernels.resolve_backend("triton", where) == "triton"  # CUDA, or the interpreter in tests
    monkeypatch.setenv(kernels.BACKEND_ENV, "triton")
    assert kernels.resolve_backend("auto", where) == "triton"
    assert kernels.resolve_backend("torch", where) == "torch"  # an explicit argument wins
    monkeypatch.setenv(kernels.BACKEND_ENV, "torch")
    assert kernels.resolve_backend("auto", where) == "torch"
    monkeypatch.setenv(kernels.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=kernels.BACKEND_ENV):
        kernels.resolve_backend("auto", host)
    with pytest.raises(ValueError, match="backend"):
        kernels.resolve_backend("fast", host)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.resolve_backend("triton", host)
    assert callable(kernels.sjd_verify)  # the submodule import did not shadow the function


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_half_inputs_on_gpu(dtype, metric):
    z = torch.randn(5000, 16, device="cuda").to(dtype)
    codebook = torch.randn(3000, 16, device="cuda").to(dtype)
    got = kernels.nearest_code(z, codebook, metric, backend="triton")
    want = reference.nearest_code(z, codebook, metric)
    assert_same_choice(got.__class__(*(t.cpu() for t in got)), want.__class__(*(t.cpu() for t in want)),
                       z.float().cpu(), codebook.float().cpu(), metric, tol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# SJD verify
# ---------------------------------------------------------------------------------------------------------------


def sjd_problem(B, W, V, seed=0, banned=0.0, one_hot=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, W + 1, V, generator=g) * 1.5
    logits[torch.rand(B, W + 1, V, generator=g) < banned] = float("-inf")
    logits[..., 0] = logits[..., 0].clamp(min=-5.0)  # at least one finite logit per row
    q = torch.softmax(torch.randn(B, W, V, generator=g) * 1.5 + logits[:, :W].clamp(min=-9) * 0.5, dim=-1)
    draft_ids = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, W)
    if one_hot:
        q = torch.nn.functional.one_hot(draft_ids, V).float()
    u_accept, u_sample = torch.rand(B, W, generator=g), torch.rand(B, generator=g)
    return logits, draft_ids, q, u_accept, u_sample


def assert_sjd_equal(args, block_v=32):
    want = reference.sjd_verify(*args)
    got = cpu(tk_sjd.sjd_verify(*dev(*args), block_v=block_v))
    assert torch.equal(got.accept_len, want.accept_len), (got.accept_len, want.accept_len)
    assert torch.equal(got.token, want.token), (got.token, want.token)
    return want


@pytest.mark.parametrize(
    "B,W,V,kwargs",
    [(1, 1, 1, {}), (9, 3, 77, {}), (6, 4, 50, {"banned": 0.3}), (7, 3, 40, {"one_hot": True}), (5, 0, 33, {})],
)
def test_triton_sjd_verify_matches_reference(B, W, V, kwargs):
    args = sjd_problem(B, W, V, **kwargs)
    out = assert_sjd_equal(args)
    assert ((out.accept_len >= 0) & (out.accept_len <= W)).all()
    logits = args[0]
    p_at_token = logits[torch.arange(B), out.accept_len, out.token]
    assert torch.isfinite(p_at_token).all()  # never a banned token


def test_sjd_all_accepted_and_first_rejected():
    B, W, V = 6, 3, 45
    logits, draft_ids, q, u_accept, u_sample = sjd_problem(B, W, V, one_hot=True)
    confident = logits.clone()
    confident[:, :W].scatter_(-1, draft_ids[..., None], 30.0)  # p(x_i) ≈ 1 > u * 1
    out = assert_sjd_equal((confident, draft_ids, q, u_accept * 0.99, u_sample))
    assert (out.accept_len == W).all()
    torch.testing.assert_close(out.token, reference.inverse_cdf(torch.softmax(logits[:, W], -1), u_sample))
    banned = logits.clone()
    banned[:, 0].scatter_(-1, draft_ids[:, :1], float("-inf"))  # p_0(x_0) = 0: always rejected
    out = assert_sjd_equal((banned, draft_ids, q, u_accept, u_sample))
    assert (out.accept_len == 0).all()
    assert (out.token != draft_ids[:, 0]).all()


def test_sjd_all_zero_residual_falls_back_to_p():
    B, W, V = 5, 2, 37
    logits, draft_ids, _, u_accept, u_sample = sjd_problem(B, W, V)
    p = torch.softmax(logits, dim=-1)
    q = 2.0 * p[:, :W]  # q ≥ p everywhere: the residual is all zero; u ≥ 0.5 rejects draft 0
    out = assert_sjd_equal((logits, draft_ids, q, 0.5 + 0.49 * u_accept, u_sample))
    assert (out.accept_len == 0).all()
    assert torch.equal(out.token, reference.inverse_cdf(p[:, 0], u_sample))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sjd_by_hand(backend):
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]]))  # (1, 3, 3)
    q = torch.tensor([[[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]]])  # (1, 2, 3)
    draft_ids = torch.tensor([[0, 1]])

    def verify(u_accept, u_sample):
        args = dev(logits, draft_ids, q, torch.tensor([u_accept]), torch.tensor([u_sample]))
        out = kernels.sjd_verify(*args, backend)
        return out.accept_len.item(), out.token.item()

    # draft 0: 0.9 * 0.25 < 0.5 accepted; draft 1: 0.5 * 0.6 = 0.3 ≥ 0.1 rejected -> n = 1
    # residual at 1: max(0, [0.1, 0.1, 0.8] - [0.1, 0.6, 0.3]) = [0, 0, 0.5] -> token 2 for any u, even u = 0
    assert verify([0.9, 0.5], 0.0) == (1, 2)
    # accept both (0.1 * 0.6 < 0.1) and sample from p_2 = [0.2, 0.2, 0.6]: u = 0.3 -> cumsum 0.4 > 0.3 -> token 1
    assert verify([0.9, 0.1], 0.3) == (2, 1)
    assert verify([0.9, 0.1], 0.0) == (2, 0)
    # a banned draft (p = 0) is rejected even with u = 0, and never sampled
    banned = logits.clone()
    banned[0, 0, 0] = float("-inf")
    out = kernels.sjd_verify(*dev(banned, draft_ids, q, torch.zeros(1, 2), torch.zeros(1)), backend)
    assert out.accept_len.item() == 0 and out.token.item() == 1  # residual [0, .6, .4] - [.25, .25, .5] -> [0, .35, 0]


def test_inverse_cdf_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    weights = torch.rand(50, 13, generator=g) * (torch.rand(50, 13, generator=g) < 0.6)
    weights[:, 5] += 0.01  # every row has mass
    u = torch.rand(50, generator=g)
    got = reference.inverse_cdf(weights, u)
    for row in range(50):
        total = weights[row].double().sum()
        running, want = 0.0, None
        for v in range(13):
            running += weights[row, v].item()
            if running > u[row].item() * total:
                want = v
                break
        assert got[row].item() == want


@pytest.mark.slow
def test_sjd_output_marginal_is_the_target():
    """Lossless: the token emitted at each position is distributed as p at that position, whatever q."""
    B, W, V = 40000, 2, 6
    g = torch.Generator().manual_seed(7)
    p_logits = torch.randn(W + 1, V, generator=g) * 1.2
    p_logits[0, 4] = float("-inf")  # a banned token
    q = torch.softmax(torch.randn(W, V, generator=g), dim=-1)  # a poor draft that proposes the banned token
    draft_ids = torch.multinomial(q, B, replacement=True, generator=g).t()  # (B, W)
    logits = p_logits.expand(B, W + 1, V)
    u_accept, u_sample = torch.rand(B, W, generator=g), torch.rand(B, generator=g)
    out = kernels.sjd_verify(logits, draft_ids, q.expand(B, W, V), u_accept, u_sample, backend="torch")
    p = torch.softmax(p_logits, dim=-1)
    first = torch.where(out.accept_len >= 1, draft_ids[:, 0], out.token)  # the token at position 0
    freq0 = torch.bincount(first, minlength=V).float() / B
    assert 0.5 * (freq0 - p[0]).abs().sum() < 0.015
    assert freq0[4] == 0
    reached = out.accept_len >= 1  # position 1 is produced iff draft 0 was accepted
    second = torch.where(out.accept_len[reached] >= 2, draft_ids[reached, 1], out.token[reached])
    freq1 = torch.bincount(second, minlength=V).float() / reached.sum()
    assert 0.5 * (freq1 - p[1]).abs().sum() < 0.025
    assert 0.1 < (out.accept_len == 0).float().mean() < 0.9  # both branches were exercised


def test_sjd_bad_input():
    logits, draft_ids, q, u_accept, u_sample = sjd_problem(2, 3, 10)
    with pytest.raises(ValueError, match="draft_probs"):
        kernels.sjd_verify(logits, draft_ids, q[:, :2], u_accept, u_sample)
    with pytest.raises(ValueError, match="logits"):
        kernels.sjd_verify(logits[0], draft_ids, q, u_accept, u_sample)


def sjd_decisions_far_from_rounding(args, tol):
    """The exact (float64) SJD decisions of each row and whether every one of them lies more than `tol` (relative)
    from its threshold: the accept tests u*q < p up to the first rejection, and the target u*total against each
    running sum of the sampling weights. Returns (accept_len, token, far) on the CPU."""
    logits, draft_ids, q, u_accept, u_sample = (t.cpu() for t in args)
    B, W = draft_ids.shape
    p = torch.softmax(logits.double(), dim=-1)  # (B, W+1, V)
    p_x = p[:, :W].gather(-1, draft_ids[..., None]).squeeze(-1)  # (B, W)
    uq = u_accept.double() * q.double().gather(-1, draft_ids[..., None]).squeeze(-1)  # (B, W)
    accept_len = (uq < p_x).long().cumprod(dim=-1).sum(dim=-1)  # (B,)
    decided = torch.arange(W) <= accept_len[:, None]  # (B, W): the tests that were made
    far = (~decided | ((uq - p_x).abs() > tol * torch.maximum(uq, p_x))).all(dim=-1)
    rows = torch.arange(B)
    p_n = p[rows, accept_len]  # (B, V)
    q_n = q.double()[rows, accept_len.clamp(max=W - 1)]
    weights = torch.where((accept_len < W)[:, None], (p_n - q_n).clamp(min=0), p_n)  # (B, V)
    cum = weights.cumsum(dim=-1)  # (B, V)
    target = u_sample.double() * cum[:, -1]  # (B,)
    token = (cum <= target[:, None]).sum(dim=-1)  # (B,): the first v whose running sum exceeds the target
    far &= cum[:, -1] > tol  # a residual that is all zero within rounding could fall back to p on one side only
    far &= ((cum - target[:, None]).abs() > tol * cum[:, -1:]).all(dim=-1)
    return accept_len, token, far


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)])
def test_sjd_verify_is_exact_away_from_rounding(dtype):
    """Both sides turn the same `dtype` logits into the same fp32 values (exactly) and differ only in fp32 order of
    summation and in exp. A sum of V terms in any order is within V * 2**-24 of its value (relative), an fp32 exp
    within a few ulps, so p and every running sum of the weights carry at most (V + 32) * 2**-24 relative error on
    each side; twice that again for safety. Every row whose decisions lie farther than that from their thresholds
    must give the float64 answer on both sides, and those rows must be nearly all (the test is not vacuous).
    The interpreter checks the kernel on a few rows only (about 2 s per row on a loaded 2-core machine)."""
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("bf16 Triton needs CUDA (the interpreter runs fp16, not bf16)")
    B, W, V = 512, 3, 200
    args = list(sjd_problem(B, W, V, banned=0.2))
    args[0] = args[0].to(dtype)
    tol = 4 * (V + 32) * 2**-24
    exact_len, exact_token, far = sjd_decisions_far_from_rounding(args, tol)
    assert far.float().mean() > 0.9
    rows = B if CUDA else 4
    want = cpu(reference.sjd_verify(*dev(*args)))
    got = cpu(tk_sjd.sjd_verify(*dev(*(a[:rows] for a in args)), block_v=64))  # four blocks per row
    for out, n in ((want, B), (got, rows)):
        keep = far[:n]
        assert torch.equal(out.accept_len[keep], exact_len[:n][keep])
        assert torch.equal(out.token[keep], exact_token[:n][keep])


# ---------------------------------------------------------------------------------------------------------------
# The prepared-codebook cache and the default path's size rule
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_prepared_codebook_is_reused_until_the_codebook_changes(backend, metric):
    from onetok.kernels.cache import PREPARED

    g = torch.Generator().manual_seed(5)
    z = dev(torch.randn(40, 6, generator=g))
    codebook = torch.nn.Parameter(dev(torch.randn(70, 6, generator=g)))
    kw = dict(block_n=16, block_k=16) if backend == "triton" else {}
    search = (lambda: tk_codebook.nearest_code(z, codebook, metric, **kw)) if backend == "triton" else (
        lambda: kernels.nearest_code(z, codebook, metric, backend="torch"))
    PREPARED.clear()

    def check():  # the search equals the reference on the codebook as it is now (a fresh copy: nothing cached)
        want = reference.nearest_code(z.cpu(), codebook.detach().cpu().clone(), metric)
        got = cpu(search())
        assert_same_choice(got, want, z.cpu(), codebook.detach().cpu(), metric)
        return got

    check()
    check()
    assert (PREPARED.hits, PREPARED.misses) == (1, 1)
    with torch.no_grad():  # in place, as the quantizer's dead-code restart does: code 3 becomes row 0 of z
        codebook[3] = z[0]
    assert check().indices[0] == 3  # a stale prepared codebook would not know code 3 moved
    codebook.grad = torch.randn_like(codebook)
    torch.optim.SGD([codebook], lr=10.0).step()  # an optimizer step
    check()
    codebook.data = dev(torch.randn(70, 6, generator=g))  # new storage behind the same Parameter
    check()
    assert PREPARED.misses == 4 and PREPARED.hits == 1


def test_prepared_cache_keys_dtype_and_kind_and_skips_inference_tensors():
    from onetok.kernels.cache import PreparedCache

    cache, calls = PreparedCache(max_entries=2), []

    def build(t):
        calls.append(t)
        return t.sum()

    a = torch.randn(4, 3)
    cache.get(a, "x", build), cache.get(a, "x", build), cache.get(a, "y", build)
    assert len(calls) == 2  # one build per (tensor, kind)
    cache.get(a.view(3, 4), "x", build)  # another tensor object over the same storage: not the cached one
    assert len(calls) == 3 and len(cache) == 2  # the least recently used entry was dropped
    b = torch.randn(4, 3)
    cache.get(b, "x", build)
    del b  # a dead codebook is never matched again, even if its id() is reused
    cache.get(torch.randn(4, 3), "x", build)
    assert len(calls) == 5
    with torch.inference_mode():
        c = torch.randn(4, 3)
    cache.get(c, "x", build), cache.get(c, "x", build)
    assert len(calls) == 7  # no version counter: built every time


def test_default_path_runs_torch_below_the_size_and_the_kernel_above(monkeypatch):
    """The size rule, with the default backend faked to 'triton' (as on CUDA); the kernel runs in the interpreter.
    Both sides give the reference's ids."""
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    real = kernels.resolve_backend
    monkeypatch.setattr(kernels, "resolve_backend", lambda b, t: "triton" if b == "auto" else real(b, t))
    limit = kernels.TORCH_SEARCH_MAX_SCORES
    z = torch.zeros(2, 4, 8)
    assert kernels.search_backend("auto", z, limit // 8) == "torch"  # 8 rows: exactly at the limit
    assert kernels.search_backend("auto", z, limit // 8 + 1) == "triton"
    assert kernels.search_backend("triton", z, 1) == "triton"  # an explicit backend is never overridden
    monkeypatch.setenv(kernels.BACKEND_ENV, "triton")
    assert kernels.search_backend("auto", z, 1) == "triton"
    monkeypatch.delenv(kernels.BACKEND_ENV)

    g = torch.Generator().manual_seed(11)
    z, codebook = torch.randn(50, 12, generator=g), torch.randn(64, 12, generator=g)
    z_dev, codebook_dev = dev(z, codebook)  # CUDA when there is one: the kernel runs compiled there
    launched = []
    monkeypatch.setattr(tk_codebook, "DEFAULT_LAUNCH", {**tk_codebook.DEFAULT_LAUNCH, "BLOCK_N": 16, "BLOCK_K": 16})
    original = tk_codebook.nearest_code
    monkeypatch.setattr(tk_codebook, "nearest_code", lambda *a, **k: launched.append(1) or original(*a, **k))
    for metric in ("cosine", "euclidean"):
        want = reference.nearest_code(z, codebook, metric)
        monkeypatch.setattr(kernels, "TORCH_SEARCH_MAX_SCORES", 50 * 64)
        small = kernels.nearest_code(z, codebook, metric)  # the torch search: bit for bit the reference
        assert not launched and torch.equal(small.indices, want.indices)
        assert torch.equal(small.distances, want.distances)
        monkeypatch.setattr(kernels, "TORCH_SEARCH_MAX_SCORES", 50 * 64 - 1)
        big = cpu(kernels.nearest_code(z_dev, codebook_dev, metric))  # the kernel
        assert launched.pop() and torch.equal(big.indices, want.indices)
        torch.testing.assert_close(big.distances, want.distances, rtol=1e-4, atol=1e-4)


def test_quantizer_search_sees_the_restarted_codes():
    from onetok.tokenizers.quantize import VectorQuantizer

    torch.manual_seed(0)
    vq = VectorQuantizer(dim=8, codebook_size=32, dead_code_threshold=2.0).train()
    z = torch.nn.functional.normalize(torch.randn(64, 8), dim=-1)
    before = vq.nearest(z)
    vq._restart_dead_codes(z, before)  # usage 1 < 2: every code restarts at a latent of the batch (plus noise)
    want = reference.nearest_code(z, vq.normalized_codebook().detach().clone(), "cosine").indices
    assert torch.equal(vq.nearest(z), want) and not torch.equal(before, want)
