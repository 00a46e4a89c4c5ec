"""The toy decoder on the CPU (Triton kernels under the interpreter) or on CUDA when present."""
import pytest
import torch

from microbench.engine.shapes import PRESETS, ModelShape
from microbench.engine.decoder import ToyDecoder
from microbench.engine.plan import launch_counts, step_kernels

TINY = PRESETS["tiny"]


def make(backend="triton", device="cpu", dtype=torch.float32, max_batch=4, max_seq=32, seed=0):
    return ToyDecoder(TINY, backend=backend, max_batch=max_batch, max_seq=max_seq, dtype=dtype,
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
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelShape("bad", 1, 8, n_heads=3, n_kv_heads=2, head_dim=4, ffn=8, vocab=8)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelShape.from_name("gpt-9")


def test_presets_have_real_shapes():
    s = PRESETS["llama-8b"]
    assert (s.n_layers, s.hidden, s.n_heads, s.n_kv_heads, s.head_dim, s.ffn, s.vocab) == \
        (32, 4096, 32, 8, 128, 14336, 128256)
    assert PRESETS["opt-125m"].vocab == 50272 and PRESETS["llama-1b"].n_kv_heads == 8


def test_planned_launches_match_the_decoder():
    dec = make()
    assert dec.fusion == 2 and dec.attention_launches(1) == 1
    n = launch_counts(step_kernels(TINY, 1, 8, attn_launches=dec.attention_launches(1),
                                   fuse=dec.fusion))
    assert n == dec.launches_per_step(1)
    L = TINY.n_layers
    # all fused, one row: the embedding rows and seq_lens; QKV, rope+store+attention, O,
    # gate/up, down per layer; then the LM head
    assert "cublas" not in n and "torch" not in n
    assert n["triton"] == 1 + 5 * L + 1
    # rope_store_kv, and attention's reduce where it splits (max_seq 1024 here)
    mid = ToyDecoder(TINY, max_batch=4, max_seq=1024, device="cpu", fuse_attention=False)
    assert mid.fusion == 1 and mid.attention_launches(1) == 2
    assert mid.launches_per_step(1)["triton"] == L * (5 + 2) + 1
    n = ToyDecoder(TINY, max_batch=4, max_seq=1024, device="cpu", fuse=False).launches_per_step(1)
    assert n["cublas"] == 4 * L + 1 and n["torch"] == 3
    assert n["triton"] == L * (5 + 2) + 1
    assert ToyDecoder(TINY, max_batch=4, max_seq=1024, device="cpu").launches_per_step(1)["triton"] \
        == 1 + 5 * L + 1                               # the fused attention merges its splits


@pytest.mark.parametrize("bs", [1, 10], ids=["skinny", "cublas"])
def test_fused_and_unfused_steps_agree(bs, device):
    """Fusion changes which kernels run, not what a step computes."""
    kw = dict(max_batch=12, max_seq=16, dtype=torch.float32, device=device)
    fused = ToyDecoder(TINY, **kw)
    mid = ToyDecoder(TINY, fuse_attention=False, **kw)
    plain = ToyDecoder(TINY, fuse=False, **kw)
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


@pytest.mark.parametrize("bs, fuse", [(1, True), (9, True), (1, "matmuls"), (9, "matmuls"), (1, False)],
                         ids=["skinny", "wide", "skinny-rope-store", "wide-rope-store", "unfused"])
def test_plan_counts_the_kernels_a_step_launches(bs, fuse, device, monkeypatch):
    """The plan the model and the sweep read (decoder.plan) names every launch a step makes:
    count the calls into each launcher during a real step."""
    from microbench import kernels
    from microbench.engine import decoder as decoder_mod
    dec = ToyDecoder(TINY, max_batch=10, max_seq=16, dtype=torch.float32, device=device,
                     fuse=bool(fuse), fuse_attention=fuse is True)
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
    monkeypatch.setattr(decoder_mod.F, "linear", counting(decoder_mod.F.linear, "cublas"))
    t, p, s = inputs(bs, 3, device)
    dec.step(t, p, s)
    plan = launch_counts(dec.plan(bs, 3))
    assert {k: plan.get(k, 0) for k in calls} == calls
    # embedding gather, seq_lens add and cast; one Triton kernel in the fused-attention plan
    assert plan.get("torch", 0) == (0 if fuse is True else 3)


def test_torch_backend_traces_as_one_graph():
    """The compile arm compiles the torch backend's step with fullgraph=True: no graph break
    (no .item(), no data-dependent Python) may hide in the references."""
    from microbench.bench.arms import torch_twin
    dec = make("triton", "cpu")
    twin = torch_twin(dec)
    assert twin.backend == "torch" and twin.k_cache is dec.k_cache and twin.embed is dec.embed
    torch._dynamo.reset()
    step = torch.compile(twin.step, fullgraph=True, dynamic=False, backend="eager")
    t, p, s = inputs(2, 5, "cpu")
    torch.testing.assert_close(step(t, p, s), twin.step(t, p, s))
    torch._dynamo.reset()


@pytest.mark.parametrize("fuse", [True, "matmuls", False], ids=["fused", "rope-store", "unfused"])
def test_measured_host_costs_cover_every_planned_kernel(fuse, device, monkeypatch):
    """The model looks each planned kernel's host cost up by name: measure_ops must time, through
    the decoder's own call path, every kernel of the plan at one row and at many."""
    from microbench.bench import launch
    from microbench.bench.timing import Stats
    calls = []

    def once(fn, **kw):   # run the op once (it must work) instead of timing it
        fn()
        calls.append(fn)
        return Stats(1.0, 1.0, 1.0, 1)

    monkeypatch.setattr(launch, "host_time_us", once)
    dec = ToyDecoder(TINY, max_batch=10, max_seq=16, dtype=torch.float32, device=device,
                     fuse=bool(fuse), fuse_attention=fuse is True)
    measured = launch.measure_ops(dec, 1)
    planned = set()
    for b in (1, 2, 9):
        names = {k.name for k in dec.plan(b, 3)}
        assert names <= set(measured), (b, names - set(measured))
        planned |= names
    assert len(calls) == len(set(map(id, calls)))
    # nothing timed that no plan launches (the reduce and final norm are copied entries)
    assert set(measured) - planned <= {"attention_reduce", "final_norm"}, set(measured) - planned
    # the fused-attention plan's embedding kernel is timed as its own Triton launch
    assert {k.launcher for k in dec.plan(1, 3) if k.name == "embedding"} == {"triton" if fuse is True else "torch"}


@pytest.mark.parametrize("fuse", [True, "matmuls", False], ids=["fused", "rope-store", "unfused"])
def test_kernel_line_ops_cover_the_plan(fuse, device):
    """kernel_lines times each planned op as a chain of calls on distinct data: every planned
    kernel but the reduce (timed within its attention call) and the two seq_lens ops has a
    maker of that name; call i < L uses layer i's weights, later ones copies; each runs."""
    from microbench.bench import launch
    dec = ToyDecoder(TINY, max_batch=10, max_seq=16, dtype=torch.float32, device=device,
                     fuse=bool(fuse), fuse_attention=fuse is True)
    L = TINY.n_layers
    for b in (1, 2, 9):
        makers = launch._layer_op_fns(dec, b, 5)
        names = {k.name for k in dec.plan(b, 5)} - {"attention_reduce", "seq_lens_add",
                                                      "seq_lens_cast", "final_norm"}
        if not fuse:   # rope and store_kv fall to the small family's line
            names -= {"rope", "store_kv"}
        assert names <= set(makers), (b, names - set(makers))
        for name, make in makers.items():
            for i in (0, L - 1, L, 3 * L + 1):
                make(i)()


@pytest.mark.parametrize("b", [1, 2], ids=["skinny", "wide"])
def test_eager_with_op_costs_samples_the_rows_plan(b, device, monkeypatch):
    """The sweep's eager timing samples, between its steps, the host cost of every op of the
    row's plan and the glue: a middle piece's host time less its kernels' costs. On a fake
    clock (each op 5 us, a piece 100 us, a step 1000 us) the figures are exact."""
    import time

    from microbench.bench import launch
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def costing(us, fn=None):
        def call():
            now[0] += us * 1e-6
            return fn() if fn else None
        return call

    dec = ToyDecoder(TINY, max_batch=4, max_seq=16, dtype=torch.float32, device=device)
    real_ops = launch._op_fns(dec, b)
    monkeypatch.setattr(launch, "_op_fns", lambda d, bb: {n: costing(5.0) for n in real_ops})
    monkeypatch.setattr(launch, "_middle_piece", lambda d, bb: costing(100.0))
    wall, costs, glue = launch.eager_with_op_costs(costing(1000.0), dec, b, steps=1, budget_s=0.0)
    assert wall.median == pytest.approx(1000.0) and wall.n >= 10
    planned = {k.name for k in dec.plan(b, 3)}
    assert planned <= set(costs) and costs["attention_reduce"] == 0.0
    assert costs["decode_attention"] == pytest.approx(5.0)
    piece = launch._piece_kernels(dec.plan(b, 3))
    # skinny: O, gate/up, down, QKV; wide: O, norm, gate/up, swiglu, down, norm, QKV (rope
    # and the KV store are in the next attention call)
    assert len(piece) == (4 if b == 1 else 7)
    assert glue == pytest.approx(100.0 - 5.0 * len(piece))


# which wrapper launches each planned kernel of a middle piece
_WRAPPER = {"o_proj:skinny": "linear", "gate_up_proj:skinny": "rmsnorm_linear_swiglu",
            "down_proj:skinny": "linear", "qkv_proj:skinny": "rmsnorm_linear",
            "rope_store_kv": "rope_store_kv", "rmsnorm": "rmsnorm", "swiglu": "swiglu",
            "o_proj": "F.linear", "gate_up_proj": "F.linear", "down_proj": "F.linear",
            "qkv_proj": "F.linear", "lm_head": "F.linear", "lm_head:skinny": "rmsnorm_linear",
            "final_norm": "rmsnorm"}


@pytest.mark.parametrize("b, layers", [(1, 2), (3, 2), (1, 1)])
def test_piece_kernels_are_what_a_middle_piece_launches(b, layers, device, monkeypatch):
    """The glue measurement subtracts the costs of piece 1's kernels: the plan's slice must name
    exactly the launches of dec.piece(1, ...), in order (on one layer, the last piece)."""
    from dataclasses import replace as dc_replace

    from microbench import kernels
    from microbench.engine import decoder as decoder_mod
    from microbench.bench import launch
    dec = ToyDecoder(dc_replace(TINY, n_layers=layers), max_batch=4, max_seq=16,
                     dtype=torch.float32, device=device)
    want = [_WRAPPER[k.name] for k in launch._piece_kernels(dec.plan(b, 3))]
    calls = []

    def spy(name, fn):
        return lambda *a, **k: (calls.append(name), fn(*a, **k))[1]

    for name in ("rmsnorm_linear", "linear", "rmsnorm_linear_swiglu", "rope_store_kv"):
        monkeypatch.setattr(kernels, name, spy(name, getattr(kernels, name)))
    for name in ("rmsnorm", "swiglu"):
        setattr(dec.ops, name, spy(name, getattr(dec.ops, name)))
    monkeypatch.setattr(decoder_mod.F, "linear", spy("F.linear", decoder_mod.F.linear))
    launch._middle_piece(dec, b)()
    assert calls == want and want
