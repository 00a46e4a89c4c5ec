"""Per-op costs of a decode step, through the decoder's own call path: host time to enqueue each
op of the plan (measure_ops, OpCostSampler, with the Python glue of a piece between its
launches) and GPU time per kernel family against the bytes it moves (kernel_lines), the
model's per-op inputs.
"""
from __future__ import annotations

import time

import torch

from microbench import kernels

from microbench.bench.inputs import step_inputs
from microbench.bench.mix import layer_mix
from microbench.bench.timing import gpu_time_us, graph_of, host_time_us, summarize
from microbench.engine.nvtx import nvtx_range
from microbench.engine.plan import FAST_ROWS, SKINNY, Fusion, family, step_kernels
from microbench.stats import fit_linear


def measure_ops(dec, b: int = 1, budget_s: float = 0.5) -> dict:
    """Host time to enqueue each op of a decode step as the eager arm runs it (its bound launch
    where the decoder binds, engine.bound; else through the decoder's wrappers), keyed by the
    kernel names of `plan.step_kernels`: the plan at batch b and,
    for a fused decoder that takes batches above `plan.FAST_ROWS` rows, the plan there too
    (cuBLAS matmuls and separate norm and swiglu kernels), so every batch size's plan finds its
    own costs. A Triton
    launcher's host cost grows with the arguments it must inspect, so a 3-argument kernel's
    launch cost understates a 30-argument one's; this measures the real ones."""
    batches = [b] + ([FAST_ROWS + 1] if dec.skinny(b) and FAST_ROWS < dec.max_batch else [])
    out: dict = {}
    for bb in batches:
        for name, fn in costed_op_fns(dec, bb).items():
            if name not in out:
                out[name] = host_time_us(fn, inner=10, budget_s=budget_s).to_dict()
    if bound_steps(dec):
        return out        # each bound launch timed alone, attention's reduce included
    if "rmsnorm" in out:
        out["final_norm"] = out["rmsnorm"]
    # decode_attention's host cost covers both its launches (split and reduce)
    out["attention_reduce"] = dict(median=0.0, p20=0.0, p80=0.0, n=0)
    return out


# warm-up calls of every op before the first sample (as timing.host_time_us warms up)
WARMUP = 3


class OpCostSampler:
    """Samples, one call of `sample()` at a time, the host cost of each op of the step's plan at
    batch b (10 calls each), of a piece and of one whole step (`step`, synchronised before
    it): what the model prices the eager step with. The sweep calls `sample()` before each
    round of its rotation (rows.eager_timer), so these see the host in the state the timed
    steps see it (on the lent machines its speed moves by a tenth to a half between the phases
    of one row). The first call warms every op up (WARMUP calls) before sampling.

    Through the decoder's wrappers (bound=None), the Python between launches is one middle
    piece's host time less its kernels' costs. For a bound step (`bound`, an
    engine.bound.BoundStep whose launches follow the plan), each op's cost is its own bound
    launch's, and the rest of a whole step's host time, spread over the pieces, is the loop
    between launches. Either way that remainder is `piece_glue_us`, which the model adds once
    per piece."""

    def __init__(self, step, dec, b: int, bound=None):
        self.step, self.dec, self.bound = step, dec, bound
        # a tensor-parallel shard's plan holds its all-reduces: each is sampled as an op
        # (every rank calls sample() at the same point of its rotation, so they pair up)
        self.plan = dec.plan(b, 0)
        if bound is None:
            self.fns, self.piece = op_fns(dec, b), middle_piece(dec, b)
        else:
            self.fns, self.piece = bound_op_fns(bound, self.plan), bound.run
        self.ops: dict = {n: [] for n in self.fns}
        self.pieces: list = []
        self.steps: list = []

    def sample(self) -> None:
        if not self.pieces:   # the first call warms every op up
            for _ in range(WARMUP):
                for fn in (self.step, self.piece, *self.fns.values()):
                    fn()
        for n, fn in self.fns.items():
            self.ops[n].append(_host_us(fn, 10))
        # the op loops leave the piece's own launch path cold (its first call after them is
        # the slowest), while the rotation times its steps back to back: one untimed call first
        self.piece()
        # a bound step's piece is the whole step: one timed call (each adds a step's GPU work
        # to the rotation's round); a middle piece is one layer: five
        self.pieces.append(_host_us(self.piece, 1 if self.bound is not None else 5))
        self.steps.append(_host_us(self.step, 1))

    def keep(self, rounds) -> None:
        """Keep the samples of the calls numbered `rounds` (0-based; one call a round) only."""
        for xs in (*self.ops.values(), self.pieces, self.steps):
            xs[:] = [xs[i] for i in rounds if i < len(xs)]

    def result(self):
        """({op name: host us per call, median}, piece_glue_us, Stats of one step's host us)."""
        costs = {n: summarize(v).median for n, v in self.ops.items()}
        piece_us = summarize(self.pieces).median
        step_host = summarize(self.steps)
        if self.bound is not None:
            glue = (piece_us - sum(costs[k.name] for k in self.plan)) / self.dec.n_pieces
            return costs, glue, step_host
        if "rmsnorm" in costs:
            costs["final_norm"] = costs["rmsnorm"]
        costs["attention_reduce"] = 0.0   # decode_attention's wrapper launches its reduce too
        glue = piece_us - sum(costs.get(k.name, 0.0) for k in piece_kernels(self.plan))
        return costs, glue, step_host


def _host_us(fn, n: int) -> float:
    """Host us per call of n back-to-back calls of fn, starting synchronised."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1e6 / n


def bound_steps(dec) -> bool:
    """Whether the sweep's eager arm runs this decoder as bound steps (ToyDecoder.bind)."""
    return dec.backend == "triton" and dec.all_reduce is None


def costed_op_fns(dec, b: int) -> dict:
    """name -> one launch of that op at batch b as the eager arm makes it: a bound launch of
    dec.bind(b) where the decoder binds, else a call through its wrappers (op_fns)."""
    if not bound_steps(dec):
        return op_fns(dec, b)
    plan = step_kernels(dec.shape, b, 0, dec.embed.element_size(), dec.attention_launches(b),
                        fusion=dec.fusion_at(b))
    return bound_op_fns(dec.bind(b), plan)


def bound_op_fns(bound, plan) -> dict:
    """name -> the first bound launch of that kernel in a bound step whose launches follow
    `plan` (plan.step_kernels at the step's batch size), named as the plan names them."""
    if len(bound.launches) != len(plan):
        raise ValueError(f"bound step has {len(bound.launches)} launches, its plan {len(plan)}")
    fns: dict = {}
    for i, (k, fn) in enumerate(zip(plan, bound.launches)):
        # a Triton kernel where the plan has one, a torch call (cuBLAS, gather) where it has not
        if isinstance(fn, kernels.Launch) != (k.launcher == "triton"):
            raise ValueError(f"bound step's launch {i} does not match its plan's {k.name} "
                             f"({k.launcher})")
        fns.setdefault(k.name, fn)
    return fns


def piece_kernels(plan):
    """The kernels of piece 1 of a plan: between the first attention call's kernels and the
    second decode_attention (layer 0 after attention, layer 1 up to attention), or to the end
    on a one-layer model."""
    att = [i for i, k in enumerate(plan) if k.name == "decode_attention"]
    first = att[0] + 1
    while plan[first].name == "attention_reduce":
        first += 1
    # one layer: piece 1 is the last piece (layer 0 after attention, final norm, LM head)
    return plan[first:att[1]] if len(att) > 1 else plan[first:]


def middle_piece(dec, b: int):
    """A call of the decoder's piece 1 (layer 0 after attention, layer 1 up to attention) at
    batch b, with random inputs; on a one-layer model, the last piece."""
    s, dev = dec.shape, dec.device
    g = torch.Generator(device=dev).manual_seed(0)
    tokens, positions, slots = step_inputs(s.vocab, b, 1, dev, slot=dec.scratch_slot)
    o = torch.randn(b, s.n_heads, s.head_dim, generator=g, device=dev).to(dec.dtype)
    res = torch.randn(b, s.hidden, generator=g, device=dev).to(dec.dtype)
    return lambda: dec.piece(1, tokens, positions, slots, o, res)


def op_fns(dec, b: int) -> dict:
    """name -> a call of that op through the decoder at batch b (names as the plan's)."""
    s, ops, dev = dec.shape, dec.ops, dec.device
    L = dec.layers[0]
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=dev).to(dec.dtype)
    tokens, positions, slots = step_inputs(s.vocab, b, 1, dev, slot=dec.scratch_slot)
    seq = dec.seq_lens_for(positions)
    x, res = r(b, s.hidden), r(b, s.hidden)
    qkv = r(b, s.qkv_size)
    q = qkv[:, :s.q_size].view(b, s.n_heads, s.head_dim)
    k = qkv[:, s.q_size:s.q_size + s.kv_size].view(b, s.n_kv_heads, s.head_dim)
    v = qkv[:, s.q_size + s.kv_size:].view(b, s.n_kv_heads, s.head_dim)
    o, gu, f = r(b, s.n_heads, s.head_dim), r(b, 2 * s.ffn), r(b, s.ffn)
    nw = L["attn_norm"]
    fused = dec.attention_fused_at(b)
    fns = {
        # the fused-attention plan's embedding kernel writes seq_lens too
        "embedding": lambda: dec.embed_inputs(tokens, positions) if fused else dec.embed[tokens],
        # the fused attention takes the QKV row (and writes the new K and V itself)
        "decode_attention": lambda: dec.attention(0, qkv if fused else q, slots, seq),
    }
    if not fused:   # else seq_lens come from the embedding kernel
        fns["seq_lens_add"] = lambda: positions + 1
        fns["seq_lens_cast"] = lambda: positions.to(torch.int32)
    if fused:
        pass                                  # rope and the KV store are inside attention
    elif dec.fusion_at(b) == Fusion.MATMULS:
        fns["rope_store_kv"] = lambda: dec.rope_store(0, q, k, v, slots, positions)
    else:
        fns["rope"] = lambda: ops.rope(q, k, positions, s.rope_theta)
        fns["store_kv"] = lambda: ops.store_kv(dec.k_cache[0], dec.v_cache[0], k, v, slots, positions)
    if dec.skinny(b):   # norms in the prologues; residual adds and swiglu in the epilogues
        fns["qkv_proj" + SKINNY] = lambda: dec.norm_linear(x, nw, L["wqkv"])
        fns["o_proj" + SKINNY] = lambda: dec.linear(o.reshape(b, s.q_size), L["wo"], res)
        fns["gate_up_proj" + SKINNY] = lambda: dec.norm_linear_swiglu(x, nw, L["wgu"])
        fns["down_proj" + SKINNY] = lambda: dec.linear(f, L["wdown"], res)
        fns["lm_head" + SKINNY] = lambda: dec.norm_linear(x, nw, dec.embed)
    else:
        fns["rmsnorm"] = lambda: ops.rmsnorm(x, nw, s.norm_eps, residual=res)
        fns["qkv_proj"] = lambda: dec.linear(x, L["wqkv"])
        fns["o_proj"] = lambda: dec.linear(o.reshape(b, s.q_size), L["wo"])
        fns["gate_up_proj"] = lambda: dec.linear(x, L["wgu"])
        fns["lm_head"] = lambda: dec.linear(x, dec.embed)
        fns["swiglu"] = lambda: ops.swiglu(gu)
        fns["down_proj"] = lambda: dec.linear(f, L["wdown"])
    return fns


# Kernel families of the model's per-family lines (model.family): each planned kernel belongs
# to one; attention's line is fitted on whole calls (split kernel and reduce together).
FAMILIES = ("skinny", "cublas", "attention", "small")
# from one row to past the default sweep's largest (64), so the sweep interpolates; both ends of
# the skinny plan's rows (1 and FAST_ROWS) and the first row of the cuBLAS plan, so a batch in
# either regime lies between two points of its own kernels (an op's skinny and cuBLAS forms are
# different kernels, and outside its points an op falls back to its family's line); 128 also
# covers attention's unsplit regime (no reduce kernel), which starts near 32 rows on an H100.
# 64, the default sweep's largest row, is a point of its own: between 32 and 128 neither a
# cuBLAS matmul's time nor the attention's (whose launch mode may change between them) is
# linear in its bytes, so a line joining those two points would misprice it
LINE_BATCHES = tuple(sorted({1, 2, 8, FAST_ROWS, FAST_ROWS + 1, 32, 64, 128}))


# bytes of distinct data each op's timed chain streams: four H100 L2s, none served from the L2
LINE_MIN_BYTES = 200 << 20


def kernel_lines(dec, context: int, batches=LINE_BATCHES, budget_s: float = 0.1,
                 replay_fixed_us: float = 0.0, min_bytes: int = LINE_MIN_BYTES,
                 mix: bool = True) -> dict:
    """GPU time of each of the step's ops against the bytes it must move, fitted per kernel
    family as t = fixed_us + bytes / bytes_per_s (model.kernel_time_us uses the lines).

    Each op runs inside a graph as a chain of calls on distinct data (each layer's weights and
    KV cache, then copies of the weights and other slots' caches) until the chain has streamed
    `min_bytes`, at least 4 calls: weights and KV history come from DRAM as in a step. The
    replay's fixed GPU cost (`replay_fixed_us`; the model charges it once per graph step) is
    taken off before dividing by the calls. A layer's ops are then timed in pairs with their
    neighbours (bench.mix; not with `mix=False`): each of their points is its alone time
    (`alone_us`) times the layer's mix factor (`mix`), since with PDL an op overlaps a twin more
    than the ops it runs between in a step. Points are taken at `batches` (those up to the
    decoder's max batch), each with the plan's byte count for that op and batch."""
    def chain_us(calls, n, label):
        with nvtx_range(label):
            g = graph_of(lambda: [f() for f in calls], 1)
            return (gpu_time_us(g.replay, inner=3, budget_s=budget_s).median - replay_fixed_us) / n

    pts: dict = {f: [] for f in FAMILIES}
    for b in (b for b in batches if b <= dec.max_batch):
        plan = {k.name: k for k in step_kernels(dec.shape, b, context, dec.embed.element_size(),
                                                dec.attention_launches(b), fusion=dec.fusion_at(b))}
        fns = {name: make for name, make in layer_op_fns(dec, b, context).items() if name in plan}
        alone, at_b = {}, {}
        for name, make in fns.items():
            k = plan[name]
            n = min(512, max(4, -(-min_bytes // max(k.bytes, 1))))
            alone[name] = chain_us([make(i) for i in range(n)], n,
                                   f"kernel line {family(k)}: {name}, b {b}")
            at_b[name] = dict(op=name, b=b, bytes=k.bytes, us=alone[name], calls=n)
            pts[family(k)].append(at_b[name])
        pairs = layer_mix(dec, b, context, fns, plan, alone, chain_us, min_bytes) if mix else None
        for name in (pairs or {}).get("cycle", ()):
            f = pairs["factor"]
            at_b[name].update(alone_us=alone[name], us=alone[name] * f, mix=f)
    out = {}
    for f, ps in pts.items():
        if not ps:
            continue
        if len({p["bytes"] for p in ps}) > 1:
            fixed, per_byte = fit_linear([p["bytes"] for p in ps], [p["us"] for p in ps], relative=True)
        else:
            fixed, per_byte = ps[0]["us"], 0.0
        out[f] = dict(fixed_us=max(0.0, fixed),
                      bytes_per_s=(1e6 / per_byte) if per_byte > 0 else None, points=ps)
    return out


def layer_op_fns(dec, b: int, context: int) -> dict:
    """name -> make(i): the i-th call of that op on distinct data, at batch b with every
    sequence at `context` cached positions (the plan's names). Calls 0 to L-1 use layers 0 to
    L-1's weights and caches; later ones copies of the weights (made on first use, held by
    the op's make) and other slots' caches."""
    s, dev = dec.shape, dec.device
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=dev).to(dec.dtype)
    L = s.n_layers
    tokens, positions, _ = step_inputs(s.vocab, b, context, dev)
    seq = dec.seq_lens_for(positions)
    x, res, qkv = r(b, s.hidden), r(b, s.hidden), r(b, s.qkv_size)
    q = qkv[:, :s.q_size].view(b, s.n_heads, s.head_dim)
    k = qkv[:, s.q_size:s.q_size + s.kv_size].view(b, s.n_kv_heads, s.head_dim)
    v = qkv[:, s.q_size + s.kv_size:].view(b, s.n_kv_heads, s.head_dim)
    o, gu, f = r(b, s.q_size), r(b, 2 * s.ffn), r(b, s.ffn)
    n_bases = max(1, dec.max_batch // b)           # disjoint groups of b real slots
    slot_sets = [torch.arange(j * b, (j + 1) * b, device=dev) % dec.max_batch for j in range(n_bases)]

    lay = dec.layers
    slots_of = lambda i: slot_sets[(i // L) % n_bases]
    fused = dec.attention_fused_at(b)
    fns = {
        "embedding": _per_call(lambda i: dec.embed_inputs(tokens, positions) if fused
                              else dec.embed[tokens]),
        "decode_attention": _per_call(lambda i: dec.attention(i % L, qkv if fused else q,
                                                             slots_of(i), seq)),
    }
    if dec.fusion_at(b) == Fusion.MATMULS:
        fns["rope_store_kv"] = _per_call(
            lambda i: dec.rope_store(i % L, q, k, v, slots_of(i), positions))
    wq, wo, wgu, wd, we = (_weights(dec, key) for key in ("wqkv", "wo", "wgu", "wdown", "embed"))
    nw = lambda i: lay[i % L]["attn_norm"]
    if dec.skinny(b):
        fns["qkv_proj" + SKINNY] = _per_call(lambda i: dec.norm_linear(x, nw(i), wq(i)))
        fns["o_proj" + SKINNY] = _per_call(lambda i: dec.linear(o, wo(i), res))
        fns["gate_up_proj" + SKINNY] = _per_call(lambda i: dec.norm_linear_swiglu(x, nw(i), wgu(i)))
        fns["down_proj" + SKINNY] = _per_call(lambda i: dec.linear(f, wd(i), res))
        fns["lm_head" + SKINNY] = _per_call(lambda i: dec.norm_linear(x, dec.final_norm, we(i)))
    else:
        fns["rmsnorm"] = _per_call(lambda i: dec.ops.rmsnorm(x, nw(i), s.norm_eps, residual=res))
        fns["qkv_proj"] = _per_call(lambda i: dec.linear(x, wq(i)))
        fns["o_proj"] = _per_call(lambda i: dec.linear(o, wo(i)))
        fns["gate_up_proj"] = _per_call(lambda i: dec.linear(x, wgu(i)))
        fns["swiglu"] = _per_call(lambda i: dec.ops.swiglu(gu))
        fns["down_proj"] = _per_call(lambda i: dec.linear(f, wd(i)))
        fns["lm_head"] = _per_call(lambda i: dec.linear(x, we(i)))
    return fns


def _weights(dec, key):
    """i -> a weight of kind `key`: layer i's for i < L (the embedding's for i = 0), then a
    copy per call, made on first use."""
    copies: dict = {}
    L = dec.shape.n_layers

    def get(i):
        src = dec.layers[i % L][key] if key != "embed" else dec.embed
        if i < (L if key != "embed" else 1):
            return src
        if i not in copies:
            copies[i] = src.clone()
        return copies[i]
    return get


def _per_call(fn):
    return lambda i: (lambda: fn(i))
