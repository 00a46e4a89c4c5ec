"""A layer's ops timed beside their neighbours (bench.mix): the cycle, its pairs and the mix
factor that scales the ops' alone times in kernel_lines."""
import pytest
import torch

from microbench.bench import mix, ops
from microbench.engine.decoder import ToyDecoder
from microbench.engine.plan import FAST_ROWS, Fusion
from microbench.engine.shapes import PRESETS

TINY_KW = dict(max_batch=20, max_seq=16, dtype=torch.float32)


def test_cycle_pairs_each_op_with_the_next_and_the_last_with_the_first():
    cycle = ["rmsnorm", "qkv_proj", "decode_attention", "o_proj", "rmsnorm", "gate_up_proj"]
    assert mix.cycle_pairs(cycle) == [("rmsnorm", "qkv_proj"), ("qkv_proj", "decode_attention"),
                                      ("decode_attention", "o_proj"), ("o_proj", "rmsnorm"),
                                      ("rmsnorm", "gate_up_proj"), ("gate_up_proj", "rmsnorm")]


def test_layer_cycle_keeps_the_timed_ops_in_launch_order():
    names = ["rmsnorm", "qkv_proj", "decode_attention", "attention_reduce", "o_proj"]
    assert mix.layer_cycle(names, {"o_proj", "qkv_proj", "rmsnorm", "decode_attention"}) == \
        ["rmsnorm", "qkv_proj", "decode_attention", "o_proj"]


def test_mix_factor_is_half_the_pairs_over_the_ops_alone():
    alone = [3.0, 4.0, 1.5]
    # pairs that cost what their ops cost alone: the step costs the alone sum
    assert mix.mix_factor([7.0, 5.5, 4.5], alone) == pytest.approx(1.0)
    # ops that overlapped their twins more than their neighbours (chains of one op too quick)
    assert mix.mix_factor([8.4, 6.6, 5.4], alone) == pytest.approx(1.2)
    # uneven pairs: half their sum over the alone sum, not the mean of the pairs' own ratios
    # (which would read 1.333 here)
    assert mix.mix_factor([7.0, 5.5, 9.0], alone) == pytest.approx(21.5 / 2 / 8.5)
    # and neighbours that overlap more than twins
    assert mix.mix_factor([6.3, 4.95, 4.05], alone) == pytest.approx(0.9)


@pytest.mark.parametrize("pairs, alone", [([1.0], [1.0]), ([1.0, 2.0], [1.0]),
                                          ([1.0, 2.0], [0.0, 0.0]), ([0.0, 2.0], [1.0, 1.0])])
def test_mix_factor_refuses_what_is_no_cycle(pairs, alone):
    with pytest.raises(ValueError, match="mix_factor"):
        mix.mix_factor(pairs, alone)


@pytest.mark.parametrize("fusion, b", [(Fusion.ATTENTION, 1), (Fusion.ATTENTION, FAST_ROWS + 1),
                                       (Fusion.UNFUSED, 2)])
def test_layer_mix_times_every_op_beside_the_next(fusion, b):
    """layer_mix times one chain per op of the layer's cycle, alternating it with the op after
    it on the same call index, and scales by half the pairs over the alone sum."""
    dec = ToyDecoder(PRESETS["tiny"], fusion=fusion, device="cpu", **TINY_KW)
    plan = {k.name: k for k in dec.plan(b, 5)}
    timed = {name for name in ops.layer_op_fns(dec, b, 5) if name in plan} - {"embedding"}
    timed = {name for name in timed if not name.startswith("lm_head")}
    fns = {name: (lambda name: lambda i: (name, i))(name) for name in timed}
    alone = {name: 1.0 + len(name) / 10 for name in timed}
    seen = []

    def chain_us(calls, n, label):   # neighbours cost a quarter more than twins
        seen.append((calls, n, label))
        return 1.25 * sum(alone[name] for name, _ in calls) / n

    out = mix.layer_mix(dec, b, 5, fns, plan, alone, chain_us, min_bytes=1)
    cycle = [k.name for k in dec.plan(b, 5)[1:] if k.name in timed]
    cycle = cycle[:len(cycle) // dec.shape.n_layers]
    assert out["cycle"] == cycle and len(cycle) >= 4
    assert out["factor"] == pytest.approx(1.25)
    assert [p["ops"] for p in out["pairs"]] == [list(p) for p in mix.cycle_pairs(cycle)]
    for (calls, n, label), (first, second) in zip(seen, mix.cycle_pairs(cycle)):
        assert n >= 4 and calls == [c for i in range(n) for c in ((first, i), (second, i))]
        assert first in label and second in label


def test_layer_mix_needs_two_timed_ops():
    dec = ToyDecoder(PRESETS["tiny"], device="cpu", **TINY_KW)
    plan = {k.name: k for k in dec.plan(1, 5)}
    assert mix.layer_mix(dec, 1, 5, {}, plan, {"qkv_proj:skinny": 1.0}, None, 1) is None


@pytest.mark.gpu
def test_kernel_lines_scale_the_layers_points_by_their_mix():
    """On the GPU: every op of the layer's cycle keeps its alone time beside its point, and
    the point is that time scaled by one factor per batch; embedding and LM head are not."""
    dec = ToyDecoder(PRESETS["tiny"], max_batch=20, max_seq=64, device="cuda")
    lines = ops.kernel_lines(dec, 40, batches=(1, 17), budget_s=0.02, min_bytes=1 << 20)
    points = [p for v in lines.values() for p in v["points"]]
    for b in (1, 17):
        at_b = [p for p in points if p["b"] == b]
        mixed = [p for p in at_b if "mix" in p]
        assert len(mixed) >= 4 and len({p["mix"] for p in mixed}) == 1
        assert 0.3 < mixed[0]["mix"] < 3.0
        for p in mixed:
            assert p["us"] == pytest.approx(p["alone_us"] * p["mix"])
        assert all("mix" not in p for p in at_b if p["op"] == "embedding"
                   or p["op"].startswith("lm_head"))



def _fake_lines(monkeypatch, dec, pair_scale=1.25):
    """kernel_lines on the CPU with fake ops and a fake clock: op `name` costs 1 + len(name)/10
    us a call alone and `pair_scale` times that in a pair chain; graphs replay their calls once,
    and the chain's GPU time is what its calls cost."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from microbench.bench.timing import Stats
    real = ops.layer_op_fns
    spent, label = [0.0], [""]

    def fake_fns(d, b, context):
        def make_for(name):
            return lambda i: (lambda: spent.__setitem__(0, spent[0] + 1 + len(name) / 10))
        return {name: make_for(name) for name in real(d, b, context)}

    @contextmanager
    def named(text):
        label[0] = text
        yield

    def timed(fn, **kw):
        spent[0] = 0.0
        fn()
        us = spent[0] * (pair_scale if label[0].startswith("kernel pair") else 1.0)
        return Stats(us, us, us, 1)

    monkeypatch.setattr(ops, "layer_op_fns", fake_fns)
    monkeypatch.setattr(ops, "nvtx_range", named)
    monkeypatch.setattr(ops, "graph_of", lambda fn, n: SimpleNamespace(replay=fn))
    monkeypatch.setattr(ops, "gpu_time_us", timed)


@pytest.mark.parametrize("fusion", [Fusion.ATTENTION, Fusion.UNFUSED], ids=["fused", "unfused"])
def test_kernel_lines_scale_the_layer_ops_points_and_nothing_else(fusion, monkeypatch):
    """Each op of the layer's cycle keeps its alone time as alone_us and its point becomes that
    times the layer's factor (here 1.25: every op costs a quarter more beside its neighbours);
    the embedding and the LM head keep their alone times; mix=False (the TP sweep) scales none."""
    dec = ToyDecoder(PRESETS["tiny"], fusion=fusion, device="cpu", **TINY_KW)
    _fake_lines(monkeypatch, dec)
    lines = ops.kernel_lines(dec, 5, batches=(1, 17), min_bytes=1)
    points = [p for v in lines.values() for p in v["points"]]
    assert {p["b"] for p in points} == {1, 17}
    for p in points:
        alone = 1 + len(p["op"]) / 10
        if p["op"] == "embedding" or p["op"].startswith("lm_head"):
            assert "mix" not in p and p["us"] == pytest.approx(alone)
        else:
            assert p["mix"] == pytest.approx(1.25) and p["alone_us"] == pytest.approx(alone)
            assert p["us"] == pytest.approx(1.25 * alone)
    unmixed = ops.kernel_lines(dec, 5, batches=(1,), min_bytes=1, mix=False)
    assert all("mix" not in p for v in unmixed.values() for p in v["points"])


def test_a_non_positive_pair_time_leaves_the_alone_times(monkeypatch):
    """A pair chain whose replay, less the replay's fixed cost, comes out at or below zero (a
    noisy host) gives no factor: the points keep their alone times and the lines are still made."""
    dec = ToyDecoder(PRESETS["tiny"], device="cpu", **TINY_KW)
    _fake_lines(monkeypatch, dec, pair_scale=0.0)
    lines = ops.kernel_lines(dec, 5, batches=(1,), min_bytes=1)
    points = [p for v in lines.values() for p in v["points"]]
    assert points and all("mix" not in p for p in points)
    assert all(p["us"] == pytest.approx(1 + len(p["op"]) / 10) for p in points)
