"""Per-op host costs and kernel lines (bench.ops) on the CPU: every planned kernel is timed
through the decoder's own call path, and the glue of a piece is its host time less its
kernels'."""
from dataclasses import replace as dc_replace

import pytest
import torch

from microbench import kernels
from microbench.bench import ops
from microbench.bench.timing import Stats
from microbench.engine import blas as blas_mod
from microbench.engine.decoder import ToyDecoder
from microbench.engine.plan import FAST_ROWS, Fusion
from microbench.engine.shapes import PRESETS, tp_shape

TINY = PRESETS["tiny"]
FUSIONS = pytest.mark.parametrize("fusion", [Fusion.ATTENTION, Fusion.MATMULS, Fusion.UNFUSED],
                                  ids=["fused", "rope-store", "unfused"])


@FUSIONS
def test_measured_host_costs_cover_every_planned_kernel(fusion, device, monkeypatch):
    """The model looks each planned kernel's host cost up by name: measure_ops must time, through
    the decoder's own call path, every kernel of the plan at one row and at many."""
    calls = []

    def once(fn, **kw):   # run the op once (it must work) instead of timing it
        fn()
        calls.append(fn)
        return Stats(1.0, 1.0, 1.0, 1)

    monkeypatch.setattr(ops, "host_time_us", once)
    dec = ToyDecoder(TINY, max_batch=20, max_seq=16, dtype=torch.float32, device=device,
                     fusion=fusion)
    measured = ops.measure_ops(dec, 1)
    planned = set()
    for b in (1, 2, 17):
        names = {k.name for k in dec.plan(b, 3)}
        assert names <= set(measured), (b, names - set(measured))
        planned |= names
    assert len(calls) == len(set(map(id, calls)))
    # nothing timed that no plan launches (the reduce and final norm are copied entries)
    assert set(measured) - planned <= {"attention_reduce", "final_norm"}, set(measured) - planned
    # the fused-attention plan's embedding kernel is timed as its own Triton launch
    want = "triton" if fusion == Fusion.ATTENTION else "torch"
    assert {k.launcher for k in dec.plan(1, 3) if k.name == "embedding"} == {want}


@FUSIONS
def test_kernel_line_ops_cover_the_plan(fusion, device):
    """kernel_lines times each planned op as a chain of calls on distinct data: every planned
    kernel but the reduce (timed within its attention call) and the two seq_lens ops has a
    maker of that name; call i < L uses layer i's weights, later ones copies; each runs."""
    dec = ToyDecoder(TINY, max_batch=20, max_seq=16, dtype=torch.float32, device=device,
                     fusion=fusion)
    L = TINY.n_layers
    for b in (1, 2, 17):
        makers = ops.layer_op_fns(dec, b, 5)
        names = {k.name for k in dec.plan(b, 5)} - {"attention_reduce", "seq_lens_add",
                                                      "seq_lens_cast", "final_norm"}
        if fusion == Fusion.UNFUSED:   # rope and store_kv fall to the small family's line
            names -= {"rope", "store_kv"}
        assert names <= set(makers), (b, names - set(makers))
        for name, make in makers.items():
            for i in (0, L - 1, L, 3 * L + 1):
                make(i)()


@pytest.mark.parametrize("b", [1, 17], ids=["skinny", "wide"])
def test_op_cost_sampler_samples_the_rows_plan(b, device, monkeypatch):
    """The sweep's eager timing samples, once per round of its rotation, the host cost of every
    op of the row's plan, the glue (a middle piece's host time less its kernels' costs) and one
    step's host time. On a fake clock (each op 5 us, a piece 100 us, a step 1000 us) the
    figures are exact, and one sample is taken per call."""
    import time
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def costing(us, fn=None):
        def call():
            now[0] += us * 1e-6
            return fn() if fn else None
        return call

    dec = ToyDecoder(TINY, max_batch=20, max_seq=16, dtype=torch.float32, device=device)
    real_ops = ops.op_fns(dec, b)
    monkeypatch.setattr(ops, "op_fns", lambda d, bb: {n: costing(5.0) for n in real_ops})
    monkeypatch.setattr(ops, "middle_piece", lambda d, bb: costing(100.0))
    sampler = ops.OpCostSampler(costing(1000.0), dec, b)
    for _ in range(7):
        sampler.sample()
    costs, glue, step_host = sampler.result()
    assert step_host.median == pytest.approx(1000.0) and step_host.n == 7
    planned = {k.name for k in dec.plan(b, 3)}
    assert planned <= set(costs) and costs["attention_reduce"] == 0.0
    assert costs["decode_attention"] == pytest.approx(5.0)
    piece = ops.piece_kernels(dec.plan(b, 3))
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
    dec = ToyDecoder(dc_replace(TINY, n_layers=layers), max_batch=4, max_seq=16,
                     dtype=torch.float32, device=device)
    want = [_WRAPPER[k.name] for k in ops.piece_kernels(dec.plan(b, 3))]
    calls = []

    def spy(name, fn):
        return lambda *a, **k: (calls.append(name), fn(*a, **k))[1]

    for name in ("rmsnorm_linear", "linear", "rmsnorm_linear_swiglu", "rope_store_kv"):
        monkeypatch.setattr(kernels, name, spy(name, getattr(kernels, name)))
    for name in ("rmsnorm", "swiglu"):
        setattr(dec.ops, name, spy(name, getattr(dec.ops, name)))
    monkeypatch.setattr(blas_mod.F, "linear", spy("F.linear", blas_mod.F.linear))
    ops.middle_piece(dec, b)()
    assert calls == want and want


@pytest.mark.parametrize("fusion", [Fusion.ATTENTION, Fusion.UNFUSED], ids=["fused", "unfused"])
@pytest.mark.parametrize("b", [1, 17], ids=["skinny", "wide"])
def test_bound_steps_give_their_launches_own_costs(b, fusion, device, monkeypatch):
    """For a bound step, each op's host cost is its own bound launch's, named as the plan names
    the kernel at that position, and the glue is the rest of a whole step's host time spread
    over the pieces. Fake clock: each launch 5 us, the loop 3 us a piece, a step 1000 us."""
    import time
    dec = ToyDecoder(TINY, max_batch=20, max_seq=16, dtype=torch.float32, device=device,
                     fusion=fusion)
    bound = dec.bind(b)
    plan = dec.plan(b, 0)
    named = ops.bound_op_fns(bound, plan)
    assert set(named) == {k.name for k in plan}
    assert named[plan[0].name] is bound.launches[0]
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def tick(us):
        def call():
            now[0] += us * 1e-6
        return call

    cold = [True]

    class FakeLaunch(kernels.Launch):   # a Triton launch that only moves the fake clock
        def __init__(self, us):
            self._us = us

        def __call__(self):
            tick(self._us)()

    fake = type(bound)(bound.inputs, [FakeLaunch(5.0) if isinstance(f, kernels.Launch)
                                      else tick(5.0) for f in bound.launches], bound.output)
    fake_run = fake.run
    runs, in_step = [], [False]

    def run():
        # the first whole step after single ops ran alone (the op loops) runs cold: 40 us more
        runs.append(1)
        in_step[0] = True
        fake_run()
        in_step[0] = False
        tick(3.0 * dec.n_pieces + (40.0 if cold[0] else 0.0))()
        cold[0] = False
    monkeypatch.setattr(fake, "run", run)
    real_named = ops.bound_op_fns
    named_alone = real_named(fake, plan)

    def alone(fn):   # an op timed in its own loop leaves the step's launch path cold
        def call():
            if not in_step[0]:
                cold[0] = True
            fn()
        return call
    monkeypatch.setattr(ops, "bound_op_fns",
                        lambda bnd, pl: {n: alone(f) for n, f in named_alone.items()})
    sampler = ops.OpCostSampler(tick(1000.0), dec, b, bound=fake)
    for _ in range(4):
        sampler.sample()
    costs, glue, step_host = sampler.result()
    assert step_host.median == pytest.approx(1000.0) and step_host.n == 4
    assert all(v == pytest.approx(5.0) for v in costs.values())
    assert glue == pytest.approx(3.0)   # timed warm: the cold call's 40 us left out
    # a bound step's piece (the whole step): one untimed call and one timed, a sample
    assert len(runs) == ops.WARMUP + 2 * 4
    with pytest.raises(ValueError, match="launches"):
        real_named(bound, plan[:-1])
    swapped = list(bound.launches)   # a torch call where the plan has a Triton kernel
    i = next(i for i, f in enumerate(swapped) if isinstance(f, kernels.Launch))
    swapped[i] = lambda: None
    with pytest.raises(ValueError, match="does not match"):
        real_named(type(bound)(bound.inputs, swapped, bound.output), plan)


@pytest.mark.parametrize("b", [1, 17], ids=["skinny", "wide"])
def test_a_shards_plan_names_the_all_reduces_its_bound_step_makes(b, device):
    """A tensor-parallel shard's plan (dec.plan) holds an all-reduce after each row-parallel
    matmul, where its bound step enqueues one, so the TP sweep's eager timing samples each
    all-reduce's host cost in place, as an op of the plan; a decoder without the hook has none."""
    dec = ToyDecoder(tp_shape(TINY, 2), max_batch=20, max_seq=16, dtype=torch.float32,
                     device=device)
    assert "all_reduce" not in {k.name for k in dec.plan(b, 0)}
    reduced = []
    dec.all_reduce = lambda h: reduced.append(tuple(h.shape))
    bound = dec.bind(b)
    plan = dec.plan(b, 0)
    names = [k.name for k in plan]
    at = [i for i, n in enumerate(names) if n == "all_reduce"]
    assert len(at) == 2 * TINY.n_layers
    assert all(names[i - 1].split(":")[0] in ("o_proj", "down_proj") for i in at)
    assert all(plan[i].bytes == b * TINY.hidden * 4 for i in at)
    named = ops.bound_op_fns(bound, plan)      # the launches line up with the plan
    reduced.clear()
    named["all_reduce"]()
    bound.run()
    assert reduced == [(b, TINY.hidden)] * (1 + 2 * TINY.n_layers)


def test_line_batches_bracket_each_plan():
    """The model reads an op's own timed points where a batch lies between two of them (else the
    family line): every batch from 1 to 128 has a line batch at or below it and one at or above
    it on the same side of FAST_ROWS, so the skinny plan's rows and the cuBLAS plan's rows are
    each read from their own kernels."""
    skinny = lambda b: b <= FAST_ROWS
    for b in range(1, 129):
        same = [p for p in ops.LINE_BATCHES if skinny(p) == skinny(b)]
        assert min(same) <= b <= max(same), (b, ops.LINE_BATCHES)


def test_the_default_sweeps_largest_row_is_a_line_batch():
    """Between the points at 32 and 128 neither a cuBLAS matmul's time nor the attention's is
    linear in its bytes, so the default sweep's largest row is timed as a point of its own."""
    from microbench.bench.sweep_config import DEFAULT_BS
    assert max(DEFAULT_BS) in ops.LINE_BATCHES, (DEFAULT_BS, ops.LINE_BATCHES)


def test_op_cost_sampler_keeps_the_samples_of_the_rounds_it_is_told():
    from microbench.bench.ops import OpCostSampler
    s = OpCostSampler.__new__(OpCostSampler)
    s.ops = {"qkv": [1.0, 2.0, 3.0, 4.0], "o": [5.0, 6.0, 7.0, 8.0]}
    s.pieces, s.steps = [10.0, 20.0, 30.0, 40.0], [0.1, 0.2, 0.3, 0.4]
    s.keep([0, 2, 3])
    assert s.ops == {"qkv": [1.0, 3.0, 4.0], "o": [5.0, 7.0, 8.0]}
    assert s.pieces == [10.0, 30.0, 40.0] and s.steps == [0.1, 0.3, 0.4]
