"""The skinny matmuls (linear, rmsnorm_linear, rmsnorm_linear_swiglu) against their references,
on fresh random inputs."""
import pytest
import torch

from microbench.kernels import (linear, linear_ref, rmsnorm_linear, rmsnorm_linear_ref,
                                rmsnorm_linear_swiglu, rmsnorm_linear_swiglu_ref)
from tests.utils import DTYPE_TOLS, assert_close, f16, gen, randn

# Under the interpreter, small blocks, so the small shapes span several programs and several K
# chunks (config=None: the wrappers' own choice, which the GPU and the realistic shape use).
SMALL = dict(BLOCK_N=8, BLOCK_K=64, STAGES=1, num_warps=4, AHEAD=0)
# The tensor-core tile (rows padded to 16), small enough to span several programs and chunks.
SMALL_DOT = dict(BLOCK_N=16, BLOCK_K=64, STAGES=2, num_warps=4, AHEAD=0, DOT=1)

# B rows, K inputs, N outputs: llama-1b's hidden size at one row (the config the wrapper picks),
# then K and N off every block size, B up to the kernel's MAX_ROWS.
SHAPES = [(1, 2048, 256), (1, 64, 48), (3, 100, 37), (8, 130, 20), (5, 257, 9), (2, 300, 70),
          (13, 200, 40), (16, 96, 33)]


@pytest.fixture
def cfg(device, K):
    """The launch config for a test shape: small blocks for the small shapes under the
    interpreter, else the wrapper's choice."""
    return SMALL if device.type == "cpu" and K < 2048 else None


def _norm_tol(B, dtype, device):
    """Tolerance factor of the norm forms: compiled, above one row the wrappers' own config runs
    on tensor cores (the wide-side tile), where the normed rows enter in the 16-bit dtype (one
    more rounding, which the SwiGLU product of two such sums can double)."""
    return 4 if device.type == "cuda" and B > 1 and dtype != torch.float32 else 1


def _weight(N, K, g, dtype, device):
    return (randn(N, K, g=g, dtype=torch.float32, device=device) / K ** 0.5).to(dtype)


def _norm_w(K, g, dtype, device):
    return (1 + 0.1 * randn(K, g=g, dtype=torch.float32, device=device)).to(dtype)


@pytest.mark.parametrize("B, K, N", SHAPES, ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_linear(B, K, N, dtype, atol, rtol, device, cfg):
    g = gen(21)
    x, w = randn(B, K, g=g, dtype=dtype, device=device), _weight(N, K, g, dtype, device)
    assert_close(linear(x, w, config=cfg), linear_ref(x, w), dtype, atol, rtol)


@pytest.mark.parametrize("B, K, N", SHAPES, ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_linear_residual(B, K, N, dtype, atol, rtol, device, cfg):
    """The residual add in the epilogue: y = r + x·wᵀ, rounded once."""
    g = gen(25)
    x, w = randn(B, K, g=g, dtype=dtype, device=device), _weight(N, K, g, dtype, device)
    r = randn(B, N, g=g, dtype=dtype, device=device)
    r0 = r.clone()
    assert_close(linear(x, w, residual=r, config=cfg), linear_ref(x, w, residual=r), dtype, atol, rtol)
    assert torch.equal(r, r0)


@pytest.mark.parametrize("B, K, N", SHAPES, ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rmsnorm_linear(B, K, N, dtype, atol, rtol, device, cfg):
    g = gen(23)
    h = 3 * randn(B, K, g=g, dtype=dtype, device=device)
    nw, w = _norm_w(K, g, dtype, device), _weight(N, K, g, dtype, device)
    h0 = h.clone()
    tol = _norm_tol(B, dtype, device)
    assert_close(rmsnorm_linear(h, nw, 1e-5, w, config=cfg), rmsnorm_linear_ref(h, nw, 1e-5, w),
                 dtype, tol * atol, tol * rtol)
    assert torch.equal(h, h0)


@pytest.mark.parametrize("B, K, N", SHAPES, ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rmsnorm_linear_swiglu(B, K, N, dtype, atol, rtol, device, cfg):
    """Gate rows n and up rows F + n in one program, silu(g)·u in the epilogue; N = F here."""
    g = gen(22)
    h = 2 * randn(B, K, g=g, dtype=dtype, device=device)
    nw, w_gu = _norm_w(K, g, dtype, device), 2 * _weight(2 * N, K, g, dtype, device)
    y = rmsnorm_linear_swiglu(h, nw, 1e-5, w_gu, config=cfg)
    assert y.shape == (B, N)
    tol = _norm_tol(B, dtype, device)
    assert_close(y, rmsnorm_linear_swiglu_ref(h, nw, 1e-5, w_gu), dtype, tol * atol, tol * rtol)


def test_linear_on_strided_rows(device):
    # rows of a wider tensor (as attention's output or a QKV slice arrives)
    g = gen(24)
    big = randn(3, 200, g=g, dtype=torch.float32, device=device)
    x, w = big[:, 10:110], _weight(17, 100, g, torch.float32, device)
    cfg = SMALL if device.type == "cpu" else None
    assert_close(linear(x, w, config=cfg), linear_ref(x, w), torch.float32)


def _fused_calls(g, B, K, N, dtype, device):
    """(h, w, {form: (call(config), reference())}) for the three fused forms on fresh inputs."""
    h = 2 * randn(B, K, g=g, dtype=dtype, device=device)
    nw = _norm_w(K, g, dtype, device)
    w, w_gu = _weight(N, K, g, dtype, device), 2 * _weight(2 * N, K, g, dtype, device)
    r = randn(B, N, g=g, dtype=dtype, device=device)
    calls = {"linear": (lambda c: linear(h, w, residual=r, config=c), lambda: linear_ref(h, w, residual=r)),
             "rmsnorm_linear": (lambda c: rmsnorm_linear(h, nw, 1e-5, w, config=c),
                                lambda: rmsnorm_linear_ref(h, nw, 1e-5, w)),
             "swiglu": (lambda c: rmsnorm_linear_swiglu(h, nw, 1e-5, w_gu, config=c),
                        lambda: rmsnorm_linear_swiglu_ref(h, nw, 1e-5, w_gu))}
    return h, w, calls


@pytest.mark.parametrize("B, K, N", [(1, 200, 11), (3, 256, 13), (2, 64, 5)], ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_gemv_one_chunk_ahead(B, K, N, dtype, atol, rtol, device):
    """AHEAD=1 (chunk c + 1's weights requested before chunk c is multiplied) sums the chunks in
    the same order as the plain loop: every fused form equals it bit for bit, and the
    reference, for a K of one chunk, several, and a ragged last one."""
    h, w, calls = _fused_calls(gen(27), B, K, N, dtype, device)
    cfg = (SMALL if device.type == "cpu"
           else dict(BLOCK_N=2, BLOCK_K=1024 // h.element_size() // 2, STAGES=3, num_warps=4))
    for name, (fn, ref) in calls.items():
        plain = fn(dict(cfg, AHEAD=0))
        ahead = fn(dict(cfg, AHEAD=1))
        assert torch.equal(ahead, plain), name
        assert_close(ahead, ref(), dtype, atol, rtol)


@pytest.mark.parametrize("B, K, N", [(1, 200, 11), (2, 300, 13), (1, 64, 5), (1, 193, 9)], ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_gemv_deferred_sums(B, K, N, dtype, atol, rtol, device, monkeypatch):
    """DEFER (per-thread partial sums over the row, one reduction at the end; the chunk loop
    unrolled 1 or 2 times) matches every fused form's reference, for a K of one chunk, several
    (an odd number of loop trips after the first among them) and a ragged last one, and the
    kernel is launched with it. The unroll factor must not change the sums (compiled, it
    changes the code; the interpreter ignores it)."""
    from microbench.kernels import gemv
    seen, real = [], gemv.launch
    monkeypatch.setattr(gemv, "launch", lambda *a, **kw: (seen.append(kw["DEFER"]), real(*a, **kw))[1])
    h, w, calls = _fused_calls(gen(29), B, K, N, dtype, device)
    cfg = dict(BLOCK_N=4, BLOCK_K=64 if device.type == "cpu" else 128, STAGES=3, num_warps=4, AHEAD=0, DOT=0)
    for name, (fn, ref) in calls.items():
        once = fn(dict(cfg, DEFER=1))
        assert torch.equal(fn(dict(cfg, DEFER=2)), once), name
        assert_close(once, ref(), dtype, atol, rtol)
    assert seen == [1, 2] * len(calls)
    with pytest.raises(ValueError, match="DEFER"):
        linear(h, w, config=dict(cfg, DEFER=1, DOT=1))


@pytest.mark.parametrize("B, K, N", [(1, 200, 40), (4, 130, 17), (11, 257, 50), (16, 64, 16)],
                         ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
@pytest.mark.parametrize("side", [1, 2])
def test_gemv_on_tensor_cores(B, K, N, dtype, atol, rtol, side, device):
    """DOT=1 (the product on tensor cores, rows padded to 16 as its M side) and DOT=2 (the
    weight rows as its M side, gemv_mma.py) in every fused form against the references, for
    one row, a few and a full bucket, K and N off the block sizes; the normed rows enter the
    product in the weights' dtype, so the norm forms get one more rounding."""
    g = gen(28 + side)
    h = 2 * randn(B, K, g=g, dtype=dtype, device=device)
    nw = _norm_w(K, g, dtype, device)
    w, w_gu = _weight(N, K, g, dtype, device), 2 * _weight(2 * N, K, g, dtype, device)
    r = randn(B, N, g=g, dtype=dtype, device=device)
    cfg = SMALL_DOT if device.type == "cpu" else dict(SMALL_DOT, BLOCK_K=128, STAGES=3)
    if side == 2:   # compiled, the warpgroup MMA's M: 64 weight rows
        cfg = dict(cfg, DOT=2, BLOCK_N=16 if device.type == "cpu" else 64)
    assert_close(linear(h, w, residual=r, config=cfg), linear_ref(h, w, residual=r), dtype, atol, rtol)
    assert_close(linear(h, w, config=cfg), linear_ref(h, w), dtype, atol, rtol)
    tol = 4 if dtype != torch.float32 else 1   # the normed rows rounded once more
    assert_close(rmsnorm_linear(h, nw, 1e-5, w, config=cfg), rmsnorm_linear_ref(h, nw, 1e-5, w),
                 dtype, tol * atol, tol * rtol)
    assert_close(rmsnorm_linear_swiglu(h, nw, 1e-5, w_gu, config=cfg),
                 rmsnorm_linear_swiglu_ref(h, nw, 1e-5, w_gu), dtype, tol * atol, tol * rtol)


@pytest.mark.parametrize("dot", [0, 1, 2])
def test_a_row_is_summed_alike_whatever_rows_share_the_launch(dot, device):
    """Within a row bucket (9 to 16 rows here, one config), row i's result does not depend on
    how many rows are launched with it: the padded graph batch and the eager batch agree."""
    g = gen(29)
    h = randn(16, 300, g=g, dtype=torch.bfloat16, device=device)
    nw, w = _norm_w(300, g, torch.bfloat16, device), _weight(70, 300, g, torch.bfloat16, device)
    cfg = dict(SMALL_DOT if dot else SMALL, BLOCK_N=16, DOT=dot, SPLIT=2 if dot == 2 else 1)
    if dot == 2 and device.type == "cuda":
        cfg["BLOCK_N"] = 64
    full = rmsnorm_linear(h, nw, 1e-5, w, config=cfg)
    for rows in (9, 12):
        assert torch.equal(rmsnorm_linear(h[:rows], nw, 1e-5, w, config=cfg), full[:rows])
    gu = 2 * _weight(140, 300, g, torch.bfloat16, device)
    full = rmsnorm_linear_swiglu(h, nw, 1e-5, gu, config=cfg)
    assert torch.equal(rmsnorm_linear_swiglu(h[:11], nw, 1e-5, gu, config=cfg), full[:11])


@pytest.mark.parametrize("B, K, N", [(1, 520, 40), (5, 384, 70), (16, 1000, 33)], ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_gemv_split_k(B, K, N, dtype, atol, rtol, device):
    """DOT=2 with K split 2, 3 and 4 ways (a ragged last split among them) matches every fused
    form's reference; the sum is the same whichever split finishes last, so two launches agree
    bit for bit; and every counter is left at zero for the next launch."""
    from microbench.kernels import gemv_mma
    h, w, calls = _fused_calls(gen(32), B, K, N, dtype, device)
    bn = 16 if device.type == "cpu" else 64
    tol = 4 if dtype != torch.float32 else 1   # the normed rows rounded once more
    for split in (2, 3, 4):
        cfg = dict(BLOCK_N=bn, BLOCK_K=64, STAGES=2, num_warps=4, AHEAD=0, DOT=2, SPLIT=split)
        for name, (fn, ref) in calls.items():
            got = fn(cfg)
            assert torch.equal(fn(cfg), got), (split, name)
            assert_close(got, ref(), dtype, tol * atol, tol * rtol)
    assert not gemv_mma.semaphores(h.device, 1).any()


@pytest.mark.parametrize("bad, match", [(dict(DOT=3), "DOT must be 0, 1 or 2"),
                                        (dict(DOT=2, AHEAD=1), "DOT must be 0, 1 or 2"),
                                        (dict(DOT=1, SPLIT=2), "SPLIT"), (dict(DOT=2, SPLIT=0), "SPLIT")],
                         ids=str)
def test_a_config_the_kernels_lack_is_refused(bad, match, device):
    h = randn(2, 64, g=gen(30), dtype=torch.float16, device=device)
    w = randn(8, 64, g=gen(31), dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match=match):
        linear(h, w, config=dict(SMALL_DOT, **bad))


BAD_CALLS = [
    ("rows", lambda d: linear(f16(17, 8, dev=d), f16(4, 8, dev=d)), "rows; allowed 1..16"),
    ("k", lambda d: linear(f16(2, 8, dev=d), f16(4, 7, dev=d)), r"w must be \[N, 8\]"),
    ("dtype", lambda d: linear(f16(2, 8, dev=d), f16(4, 8, dev=d).float()), "dtypes"),
    ("residual", lambda d: linear(f16(2, 8, dev=d), f16(4, 8, dev=d), residual=f16(2, 5, dev=d)),
     "residual must match"),
    ("norm-swiglu-odd", lambda d: rmsnorm_linear_swiglu(f16(2, 8, dev=d), f16(8, dev=d), 1e-5, f16(5, 8, dev=d)),
     "2F rows"),
    ("rmsnorm-linear-nw", lambda d: rmsnorm_linear(f16(2, 8, dev=d), f16(7, dev=d), 1e-5, f16(4, 8, dev=d)),
     "norm_w"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)


def test_pdl_modes_and_a_bad_one():
    from microbench.kernels import _utils, gemv
    assert _utils.pdl_mode(True) == _utils.pdl_mode("early") == _utils.PDL_EARLY
    assert _utils.pdl_mode("late") == _utils.PDL_LATE
    assert _utils.pdl_mode(False) == _utils.PDL_OFF
    with pytest.raises(ValueError, match="pdl must be True, False, 'early' or 'late'"):
        _utils.pdl_mode("sometimes")
    # on CPU tensors (the interpreter) no mode launches with PDL
    x = torch.randn(2, 8)
    assert not gemv.use_pdl(x, "late") and not gemv.use_pdl(x, True)
