"""The toy decoder on the CPU (Triton kernels under the interpreter) or on CUDA when present."""
import pytest
import torch

from microbench.engine.decoder import ToyDecoder, kernel_ops
from microbench.engine.plan import Fusion, launch_counts, step_kernels
from microbench.engine.shapes import PRESETS

TINY = PRESETS["tiny"]


def make(backend="triton", device="cpu", dtype=torch.float32, max_batch=4, max_seq=32, seed=0,
         shape=TINY):
    return ToyDecoder(shape, backend=backend, max_batch=max_batch, max_seq=max_seq, dtype=dtype,
                      device=device, seed=seed)


def inputs(bs, pos, device, seed=3):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(TINY.vocab, (bs,), generator=g).to(device)
    positions = torch.full((bs,), pos, dtype=torch.long, device=device)
    slots = torch.arange(bs, dtype=torch.long, device=device)
    return tokens, positions, slots


def test_backends_agree(device):
    a, b = make("triton", device), make("torch", device)
    for dec in (a, b):
        dec.fill_cache(9)
    t, p, s = inputs(3, 9, device)
    la, lb = a.step(t, p, s), b.step(t, p, s)
    assert la.shape == (3, TINY.vocab) and torch.isfinite(la).all()
    # fp32 throughout; the two backends differ only in summation order
    torch.testing.assert_close(la, lb, atol=2e-4, rtol=2e-4)


def _rope_full(x, pos, theta):
    # x [T, H, D], NeoX halves, positions 0..T-1
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D // 2, dtype=torch.float64) * 2 / D)
    ang = (pos[:, None].double() * inv[None, :]).float()                  # [T, D/2]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def full_forward(dec: ToyDecoder, tokens):
    """Independent fp32 forward over a whole sequence with causal attention (no KV cache)."""
    s = dec.shape
    T = len(tokens)
    pos = torch.arange(T)
    cpu = lambda t: t.detach().float().cpu()
    h = cpu(dec.embed)[tokens]
    for L in dec.layers:
        L = {k: cpu(v) for k, v in L.items()}
        x = _rms(h, L["attn_norm"].float(), s.norm_eps)
        qkv = x @ L["wqkv"].float().T
        q = qkv[:, :s.q_size].view(T, s.n_heads, s.head_dim)
        k = qkv[:, s.q_size:s.q_size + s.kv_size].view(T, s.n_kv_heads, s.head_dim)
        v = qkv[:, s.q_size + s.kv_size:].view(T, s.n_kv_heads, s.head_dim)
        q, k = _rope_full(q, pos, s.rope_theta), _rope_full(k, pos, s.rope_theta)
        g = s.n_heads // s.n_kv_heads
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        att = torch.einsum("thd,uhd->htu", q, k) * s.head_dim ** -0.5
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        o = torch.einsum("htu,uhd->thd", att.softmax(-1), v).reshape(T, s.q_size)
        h = h + o @ L["wo"].float().T
        x = _rms(h, L["ffn_norm"].float(), s.norm_eps)
        gu = x @ L["wgu"].float().T
        a, b = gu[:, :s.ffn], gu[:, s.ffn:]
        h = h + (torch.nn.functional.silu(a) * b) @ L["wdown"].float().T
    return _rms(h, cpu(dec.final_norm), s.norm_eps) @ cpu(dec.embed).T


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_token_by_token_equals_full_causal_attention(backend, device):
    dec = make(backend, device, max_batch=3, max_seq=24, seed=5)
    tokens = torch.randint(TINY.vocab, (11,), generator=torch.Generator().manual_seed(7))
    want = full_forward(dec, tokens)
    slot = torch.tensor([2], device=device)
    for i, tok in enumerate(tokens.tolist()):
        got = dec.step(torch.tensor([tok], device=device), torch.tensor([i], device=device), slot)
        torch.testing.assert_close(got[0].cpu(), want[i], atol=3e-4, rtol=3e-4)


def test_step_leaves_other_slots_bit_identical(device):
    dec = make("triton", device, max_batch=4, max_seq=16)
    dec.fill_cache(6)
    before = [c.clone() for c in (*dec.k_cache, *dec.v_cache)]
    t, p, _ = inputs(1, 6, device)
    dec.step(t, p, torch.tensor([1], device=device))
    for b, c in zip(before, (*dec.k_cache, *dec.v_cache)):
        changed = (b != c)
        assert changed[1, :, 6].any()                     # the new token was written
        changed[1, :, 6] = False
        assert not changed.any()                          # and nothing else moved


def test_pieces_compose_to_the_step(device):
    dec = make("triton", device)
    dec.fill_cache(5)
    t, p, s = inputs(2, 5, device)
    want = dec.step(t, p, s)
    seq = dec.seq_lens_for(p)
    o = torch.empty(2, TINY.n_heads, TINY.head_dim, device=device)
    res = None
    for i in range(dec.n_pieces - 1):
        q, res = dec.piece(i, t, p, s, o=o if i else None, residual=res)
        dec.attention(i, q, s, seq, out=o)
    got = dec.piece(dec.n_pieces - 1, t, p, s, o=o, residual=res)
    assert torch.equal(got, want)


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_step_head_and_tail_compose_to_the_step(layers, device):
    """The graph runner's split launch captures step_head and step_tail as two graphs."""
    dec = make("triton", device)
    dec.fill_cache(5)
    t, p, s = inputs(2, 5, device)
    want = dec.step(t, p, s)
    got = dec.step_tail(dec.step_head(t, p, s, layers), t, p, s)
    assert torch.equal(got, want)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        ToyDecoder(TINY, backend="jax", device="cpu")
    with pytest.raises(ValueError, match="max_batch"):
        ToyDecoder(TINY, max_batch=0, device="cpu")
    with pytest.raises(ValueError, match="context"):
        make().fill_cache(1000)


def test_planned_launches_match_the_decoder():
    dec = make()
    assert dec.fusion == 2 and dec.attention_launches(1) == 1
    n = launch_counts(step_kernels(TINY, 1, 8, attn_launches=dec.attention_launches(1),
                                   fusion=dec.fusion))
    assert n == dec.launches_per_step(1)
    L = TINY.n_layers
    # all fused, one row: the embedding rows and seq_lens; QKV, rope+store+attention, O,
    # gate/up, down per layer; then the LM head
    assert "cublas" not in n and "torch" not in n
    assert n["triton"] == 1 + 5 * L + 1
    # rope_store_kv, and attention's reduce where it splits (max_seq 1024 here)
    mid = ToyDecoder(TINY, max_batch=4, max_seq=1024, device="cpu", fusion=Fusion.MATMULS)
    assert mid.fusion == 1 and mid.attention_launches(1) == 2
    assert mid.launches_per_step(1)["triton"] == L * (5 + 2) + 1
    n = ToyDecoder(TINY, max_batch=4, max_seq=1024, device="cpu",
                   fusion=Fusion.UNFUSED).launches_per_step(1)
    assert n["cublas"] == 4 * L + 1 and n["torch"] == 3
    assert n["triton"] == L * (5 + 2) + 1
    assert ToyDecoder(TINY, max_batch=4, max_seq=1024, device="cpu").launches_per_step(1)["triton"] \
        == 1 + 5 * L + 1                               # the fused attention merges its splits


@pytest.mark.parametrize("bs", [1, 19], ids=["skinny", "cublas"])
def test_fused_and_unfused_steps_agree(bs, device):
    """Fusion changes which kernels run, not what a step computes."""
    kw = dict(max_batch=20, max_seq=16, dtype=torch.float32, device=device)
    fused = ToyDecoder(TINY, **kw)
    mid = ToyDecoder(TINY, fusion=Fusion.MATMULS, **kw)
    plain = ToyDecoder(TINY, fusion=Fusion.UNFUSED, **kw)
    assert (fused.fusion, mid.fusion, plain.fusion) == (2, 1, 0)
    for dec in (fused, mid, plain):
        dec.fill_cache(5)
    t, p, s = inputs(bs, 5, device)
    want = plain.step(t, p, s)
    for dec in (fused, mid):
        torch.testing.assert_close(dec.step(t, p, s), want, atol=2e-4, rtol=2e-4)
        for a, b in zip(dec.k_cache + dec.v_cache, plain.k_cache + plain.v_cache):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not fused.attn_semaphores.any()   # the split counters are left at zero


@pytest.mark.parametrize("bs, fusion", [(1, Fusion.ATTENTION), (19, Fusion.ATTENTION), (1, Fusion.MATMULS),
                                         (19, Fusion.MATMULS), (1, Fusion.UNFUSED)],
                         ids=["skinny", "wide", "skinny-rope-store", "wide-rope-store", "unfused"])
def test_plan_counts_the_kernels_a_step_launches(bs, fusion, device, monkeypatch):
    """The plan the model and the sweep read (decoder.plan) names every launch a step makes:
    count the calls into each launcher during a real step."""
    from microbench import kernels
    from microbench.engine import blas as blas_mod
    dec = ToyDecoder(TINY, max_batch=20, max_seq=16, dtype=torch.float32, device=device,
                     fusion=fusion)
    calls = {"triton": 0, "cublas": 0}

    def counting(fn, launcher, n=lambda *a, **k: 1):
        def wrapped(*a, **k):
            calls[launcher] += n(*a, **k)
            return fn(*a, **k)
        return wrapped

    for name in ("rmsnorm_linear", "linear", "rmsnorm_linear_swiglu", "rope_store_kv",
                 "rope_store_attention", "embed_seq_lens"):
        monkeypatch.setattr(kernels, name, counting(getattr(kernels, name), "triton"))
    for name in ("rmsnorm", "rope", "store_kv", "swiglu"):
        setattr(dec.ops, name, counting(getattr(dec.ops, name), "triton"))
    dec.ops.decode_attention = counting(dec.ops.decode_attention, "triton",
                                        lambda q, *a, **k: dec.attention_launches(q.shape[0]))
    monkeypatch.setattr(blas_mod.F, "linear", counting(blas_mod.F.linear, "cublas"))
    t, p, s = inputs(bs, 3, device)
    dec.step(t, p, s)
    plan = launch_counts(dec.plan(bs, 3))
    assert {k: plan.get(k, 0) for k in calls} == calls
    # embedding gather, seq_lens add and cast; one Triton kernel in the fused-attention plan
    assert plan.get("torch", 0) == (0 if fusion == Fusion.ATTENTION else 3)


def test_torch_backend_runs_unfused():
    """The fused kernels exist for the triton backend only: asked for any plan, the torch
    backend runs one reference op per operation."""
    dec = ToyDecoder(TINY, backend="torch", max_batch=2, max_seq=8, device="cpu",
                     fusion=Fusion.ATTENTION)
    assert dec.fusion == Fusion.UNFUSED and not dec.attention_fused_at(1) and not dec.skinny(1)
    assert dec.launches_per_step(1).get("cublas") == 4 * TINY.n_layers + 1


def test_kernel_ops_pick_the_backend():
    from microbench import kernels
    assert kernel_ops("triton").rmsnorm is kernels.rmsnorm
    assert kernel_ops("torch").decode_attention is kernels.decode_attention_ref
    with pytest.raises(ValueError, match="backend"):
        kernel_ops("jax")


@pytest.mark.gpu
def test_backends_agree_on_opt125m():
    a = make("triton", "cuda", max_batch=8, max_seq=64, shape=PRESETS["opt-125m"])
    b = make("torch", "cuda", max_batch=8, max_seq=64, shape=PRESETS["opt-125m"])
    for dec in (a, b):
        dec.fill_cache(40)
    g = torch.Generator(device="cuda").manual_seed(0)
    t = torch.randint(a.shape.vocab, (5,), generator=g, device="cuda")
    p = torch.randint(1, 40, (5,), generator=g, device="cuda")   # ragged histories
    s = torch.randperm(5, generator=g, device="cuda")
    # fp32 (no TF32: torch's default for matmuls); the backends differ in summation order only
    torch.testing.assert_close(a.step(t, p, s), b.step(t, p, s), atol=1e-3, rtol=1e-3)
