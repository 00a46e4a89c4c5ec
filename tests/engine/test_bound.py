"""Bound steps (ToyDecoder.bind): the same kernels on the same buffers, bound once. On the CPU the
Triton kernels run under the interpreter (each bound launch goes through the JIT there); with
CUDA the bound launches go through the compiled kernels' own launchers."""
import pytest
import torch

from microbench.engine.decoder import ToyDecoder
from microbench.engine.plan import Fusion, step_kernels
from microbench.engine.shapes import PRESETS

TINY = PRESETS["tiny"]


def make(device, fusion=Fusion.ATTENTION, max_batch=20, dtype=torch.float32, blas=None):
    dec = ToyDecoder(TINY, max_batch=max_batch, max_seq=16, dtype=dtype, device=device,
                     fusion=fusion, blas=blas)
    dec.fill_cache(7)
    return dec


def packed_inputs(bs, pos, device, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(TINY.vocab, (bs,), generator=g)
    positions = torch.randint(pos - 3, pos + 1, (bs,), generator=g)
    slots = torch.randperm(bs, generator=g)
    return torch.stack([tokens, positions, slots]).to(device)


@pytest.mark.parametrize("fusion", list(Fusion), ids=lambda f: f.name.lower())
@pytest.mark.parametrize("bs", [1, 3, 19], ids=lambda b: f"bs{b}")
def test_bound_step_equals_the_step(fusion, bs, device):
    """Every batch size (skinny and cuBLAS paths), every plan: a bound step on fresh inputs gives
    the logits and KV-cache writes of a plain step on the same inputs, step after step."""
    plain, bound_dec = make(device, fusion), make(device, fusion)
    bound = bound_dec.bind(bs)
    for seed in (1, 2):
        x = packed_inputs(bs, 7 + seed, device, seed)
        want = plain.step(*x)
        got = bound.step_packed(x)
        assert got.shape == (bs, TINY.vocab)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        for a, b in zip(bound_dec.k_cache + bound_dec.v_cache, plain.k_cache + plain.v_cache):
            torch.testing.assert_close(a[:-1], b[:-1], atol=0, rtol=0)   # scratch slot aside


@pytest.mark.parametrize("fusion", list(Fusion), ids=lambda f: f.name.lower())
@pytest.mark.parametrize("bs", [1, 19])
def test_bound_step_launches_the_plan(fusion, bs, device):
    """A bound step holds one launch per kernel of the step's plan (what the model counts)."""
    dec = make(device, fusion)
    bound = dec.bind(bs)
    assert len(bound) == len(dec.plan(bs, 0))


@pytest.mark.parametrize("blas", ["cublas", "cublaslt"])
def test_bound_wide_step_equals_the_step_through_either_blas_interface(blas, device):
    """Above FAST_ROWS the matmuls go through cuBLAS (F.linear) or cuBLASLt (addmm with a zero
    bias): bound or not, either gives the logits of the other within float32 rounding, and the
    bound step's recorded launches write the output the step reads on new inputs."""
    ref = make(device, blas="cublas")
    dec = make(device, blas=blas)
    bound = dec.bind(19)
    for seed in (1, 2):
        x = packed_inputs(19, 7 + seed, device, seed)
        want = ref.step(*x)
        torch.testing.assert_close(dec.step(*x), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(bound.step_packed(x), want, atol=1e-4, rtol=1e-4)


def test_binding_leaves_real_sequences_alone(device):
    """Recording a step writes only the scratch slot of the KV cache."""
    dec = make(device)
    before = [c[:-1].clone() for c in dec.k_cache + dec.v_cache]
    dec.bind(4)
    for a, b in zip(before, dec.k_cache + dec.v_cache):
        assert torch.equal(a, b[:-1])


def test_bind_rejects_what_it_cannot_bind(device):
    dec = make(device)
    with pytest.raises(ValueError, match="outside 1..20"):
        dec.bind(21)
    twin = ToyDecoder(TINY, backend="torch", max_batch=4, max_seq=16, dtype=torch.float32,
                      device=device)
    with pytest.raises(ValueError, match="triton backend"):
        twin.bind(1)


def test_with_fusion_shares_weights_and_caches(device):
    dec = make(device)
    plain = dec.with_fusion(Fusion.UNFUSED)
    assert plain.fusion == Fusion.UNFUSED and dec.fusion == Fusion.ATTENTION
    assert plain.embed is dec.embed and plain.k_cache is dec.k_cache


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["opt-125m", "llama-1b"])
@pytest.mark.parametrize("fusion", [Fusion.ATTENTION, Fusion.UNFUSED], ids=lambda f: f.name.lower())
def test_bound_steps_match_plain_steps_on_the_gpu(preset, fusion):
    """On CUDA the bound launches bypass the JIT (each Triton launch holds its compiled kernel's
    launcher) and still compute exactly what the plain step computes, at every batch size."""
    from microbench.kernels._launch import Launch
    shape = PRESETS[preset]
    dec = ToyDecoder(shape, max_batch=64, max_seq=128, device="cuda", fusion=fusion)
    dec.fill_cache(100)
    for bs in (1, 4, 16, 64):
        bound = dec.bind(bs)
        triton_launches = [f for f in bound.launches if isinstance(f, Launch)]
        assert triton_launches and all(f.direct for f in triton_launches)
        g = torch.Generator(device="cuda").manual_seed(bs)
        x = torch.stack([torch.randint(shape.vocab, (bs,), generator=g, device="cuda"),
                         torch.full((bs,), 100, device="cuda"),
                         torch.randperm(bs, generator=g, device="cuda")])
        want = dec.step(*x).clone()
        got = bound.step_packed(x)
        torch.cuda.synchronize()
        assert torch.equal(got, want), (bs, (got.float() - want.float()).abs().max().item())


@pytest.mark.parametrize("bs", [1, 19])
def test_bound_step_records_the_shards_all_reduces(bs, device):
    """A tensor-parallel shard's all-reduces (the decoder's all_reduce hook, in place) are
    bound too, in their places among the kernels: with a stand-in hook (scale by 0.5) the bound
    step equals the plain step, and holds the plan's launches, two reduces per layer among them."""
    plain, bound_dec = make(device), make(device)
    calls = []

    def reduce(h):
        calls.append(h.data_ptr())
        h.mul_(0.5)

    plain.all_reduce = bound_dec.all_reduce = reduce
    bound = bound_dec.bind(bs)
    planned = [k.name for k in bound_dec.plan(bs, 0)]    # a shard's plan names its reduces
    assert len(bound) == len(planned) and planned.count("all_reduce") == 2 * TINY.n_layers
    x = packed_inputs(bs, 9, device, 3)
    calls.clear()
    got = bound.step_packed(x)
    assert len(calls) == 2 * TINY.n_layers
    torch.testing.assert_close(got, plain.step(*x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fusion", list(Fusion), ids=lambda f: f.name.lower())
def test_bound_attention_equals_the_call_on_new_inputs(fusion, device):
    """The piecewise graphs' eager attention, bound once (bind_attention), gives what a plain
    attention call gives after its inputs (the QKV or q rows, the slots, the sequence lengths)
    change in place, and writes the same KV-cache rows."""
    plain, bound_dec = make(device, fusion), make(device, fusion)
    bs = 3

    def attention_inputs(dec, x):
        h, seq_lens = dec.embed_inputs(x[0], x[1])
        q, _ = dec.piece(0, x[0], x[1], x[2], h=h)
        return q, x[2].clone(), seq_lens

    x = packed_inputs(bs, 8, device, 1)
    q, slots, seq_lens = attention_inputs(bound_dec, x)
    out = torch.empty_like(plain.attention(0, *attention_inputs(plain, x)))
    launches = bound_dec.bind_attention(0, q, slots, seq_lens, out)
    assert launches           # at least the attention kernel, bound
    for seed in (2, 3):
        y = packed_inputs(bs, 8 + seed, device, seed)
        want = plain.attention(0, *attention_inputs(plain, y))
        for static, new in zip((q, slots, seq_lens), attention_inputs(bound_dec, y)):
            static.copy_(new)
        for fn in launches:
            fn()
        torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)
        for a, b in zip(bound_dec.k_cache + bound_dec.v_cache, plain.k_cache + plain.v_cache):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
