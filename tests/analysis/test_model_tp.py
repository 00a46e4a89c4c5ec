"""The analytic model under tensor parallelism, on hand-computed cases: all-reduce times and
their fit, where the all-reduces sit in a rank's kernels, and the TP step against one GPU's."""
from dataclasses import replace

import pytest

from microbench.analysis import model as mdl
from microbench.analysis import model_tp as mtp
from microbench.engine.plan import step_kernels
from microbench.engine.shapes import PRESETS, tp_shape


# ---- the model's all-reduce term -----------------------------------------------------------
def _profile(**kw):
    base = dict(name="test", source="test", copy_bw=1e30, matmul_flops=1e30,
                launch_host_us=dict(torch=10.0, cublas=10.0, triton=10.0), kernel_min_us=1.0,
                replay_host_us=4.0, replay_gpu_fixed_us=2.0, sync_us=0.0)
    base.update(kw)
    return mdl.DeviceProfile(**base)


AR = mtp.AllReduceProfile(world=2, latency_us=5.0, bus_bw=1e9, host_us=20.0)


def test_allreduce_time_by_hand():
    # 1 MB on 2 ranks: bus bytes 1 MB; at 100 GB/s 10 us, + 5 us latency
    ar = replace(AR, bus_bw=100e9)
    assert mtp.allreduce_us(1e6, ar) == pytest.approx(15.0)
    # 4 ranks move 2·3/4 = 1.5x the message: 15 us + 5
    assert mtp.allreduce_us(1e6, replace(ar, world=4)) == pytest.approx(20.0)
    assert mtp.allreduce_us(1e6, replace(ar, world=1)) == 0.0
    assert mtp.bus_bandwidth(1e6, 10.0, 2) == pytest.approx(100e9)


def test_fit_recovers_latency_and_bus_bandwidth():
    pts = [(s, 7.5 + mtp.bus_bytes(s, 2) / 150e9 * 1e6) for s in (4096, 65536, 1 << 20, 1 << 26)]
    fit = mtp.fit_allreduce(pts, 2, host_us=12.0)
    assert fit.latency_us == pytest.approx(7.5, rel=1e-6)
    assert fit.bus_bw == pytest.approx(150e9, rel=1e-6)
    flat = mtp.fit_allreduce([(1024, 9.0), (2048, 9.0)], 2)  # all latency: no bandwidth term
    assert flat.bus_bw is None and flat.latency_us == 9.0
    assert mtp.AllReduceProfile.from_dict(fit.to_dict()) == fit


def test_a_timed_message_size_takes_its_own_time():
    """The benchmark times the sweep's own message sizes: those take their measured time (a
    latency-bound point below the fitted line, as small messages sit), any other size the
    line; the points survive the run record's round trip."""
    pts = [(8192, 16.2), (32768, 17.0), (1 << 20, 26.0), (1 << 24, 90.6)]
    fit = mtp.fit_allreduce(pts, 2, host_us=40.0)
    assert mtp.allreduce_us(8192, fit) == 16.2 and mtp.allreduce_us(1 << 24, fit) == 90.6
    line = fit.latency_us + mtp.bus_bytes(65536, 2) / fit.bus_bw * 1e6
    assert mtp.allreduce_us(65536, fit) == pytest.approx(line)
    assert line != pytest.approx(17.0, rel=0.01)
    assert mtp.AllReduceProfile.from_dict(fit.to_dict()).points == fit.points


@pytest.mark.parametrize("b", [1, 17], ids=["skinny", "cublas"])
def test_allreduces_follow_the_row_parallel_matmuls_at_one_row_too(b):
    # at one row the matmuls are the skinny kernels (named o_proj:skinny, down_proj:skinny)
    s = PRESETS["tiny"]
    names = [k.name for k in mtp.tp_step_kernels(s, 2, b, 16)]
    ars = [i for i, n in enumerate(names) if n == "all_reduce"]
    assert len(ars) == 2 * s.n_layers
    assert all(names[i - 1].split(":")[0] in mtp.ROW_PARALLEL for i in ars)


def test_two_allreduces_per_layer_after_the_row_parallel_matmuls():
    s = PRESETS["tiny"]
    ks = mtp.tp_step_kernels(s, 2, 17, 16)
    names = [k.name for k in ks]
    ars = [i for i, n in enumerate(names) if n == "all_reduce"]
    assert len(ars) == 2 * s.n_layers and all(names[i - 1] in mtp.ROW_PARALLEL for i in ars)
    assert all(ks[i].bytes == 17 * s.hidden * 2 for i in ars)         # [b, hidden] in bf16
    rest = [k for k in ks if k.name != "all_reduce"]
    assert rest == step_kernels(tp_shape(s, 2), 17, 16)
    assert mtp.tp_step_kernels(s, 1, 4, 16) == step_kernels(s, 4, 16)


def test_tp_graph_step_by_hand():
    s, p = PRESETS["tiny"], _profile()
    # 4 all-reduces of 4·128·2 = 1024 bytes: 5 us + 1024 B / 1 GB/s = 6.024 us each
    g = mtp.tp_graph_step_us(s, 2, 3, 16, p, AR, padded=4)
    shard = mdl.graph_step_us(tp_shape(s, 2), 3, 16, p, padded=4)
    assert g == pytest.approx(shard + 4 * 6.024)


def test_tp_eager_step_by_hand():
    s, p = PRESETS["tiny"], _profile()
    # every enqueue (10 us, 20 for an all-reduce) outlasts every GPU time (1 us, 6.024 for an
    # all-reduce): the GPU waits for the host, and the step is the host's bill plus the last
    # kernel (the LM head, 1 us)
    n = len(step_kernels(tp_shape(s, 2), 4, 16))
    assert mtp.tp_eager_step_us(s, 2, 4, 16, p, AR) == pytest.approx(10 * n + 20 * 4 + 1.0)


def test_tp_eager_step_takes_the_host_costs_sampled_in_place():
    """Costs sampled beside a row's steps override the benchmark's: an all-reduce's in-place
    host cost (the `all_reduce` op) replaces the collective benchmark's enqueue cost, and the
    glue is paid once per piece (L + 1 pieces), as on one GPU."""
    s, p = PRESETS["tiny"], _profile()
    n = len(step_kernels(tp_shape(s, 2), 4, 16))
    sampled = replace(p, op_host_us={"all_reduce": 45.0}, piece_glue_us=7.0)
    want = 10 * n + 45.0 * 4 + 7.0 * (s.n_layers + 1) + 1.0
    assert mtp.tp_eager_step_us(s, 2, 4, 16, sampled, AR) == pytest.approx(want)
    # at TP 1 there is nothing to reduce: the single-GPU model's step, glue included
    assert mtp.tp_eager_step_us(s, 1, 4, 16, sampled, None) == pytest.approx(
        mdl.eager_step_us(s, 4, 16, sampled))


def test_tp1_prediction_is_the_single_gpu_model():
    s, p = PRESETS["llama-1b"], _profile(copy_bw=3e12, matmul_flops=7e14)
    one = mtp.predict_tp(s, 1, 16, 512, p, None, padded=16)
    ref = mdl.predict(s, 16, 512, p, padded=16)
    for k in ("predicted_eager_step_us", "predicted_graph_step_us", "predicted_speedup"):
        assert one[k] == pytest.approx(ref[k])
    assert one["allreduces"] == 0 and one["predicted_allreduce_gpu_us"] == 0.0


def test_tp_halves_a_weight_bound_step_less_the_allreduces():
    s = PRESETS["llama-70b"]
    p = _profile(copy_bw=3.35e12, matmul_flops=989e12)
    ar = mtp.AllReduceProfile(world=2, latency_us=10.0, bus_bw=300e9, host_us=20.0)
    one = mtp.predict_tp(s, 1, 1, 512, p, None)
    two = mtp.predict_tp(s, 2, 1, 512, p, ar)
    assert two["allreduces"] == 160
    assert 0.5 < two["predicted_graph_step_us"] / one["predicted_graph_step_us"] < 0.6
    assert two["predicted_allreduce_share_graph"] == pytest.approx(
        160 * mtp.allreduce_us(8192 * 2, ar) / two["predicted_graph_step_us"])


def test_tp_rows_get_no_prediction_without_an_allreduce_fit():
    """Beside a TP sweep's rows: the model's columns where the all-reduce benchmark gave a fit,
    and none where it did not (the all-reduces would be priced at nothing); each row is priced
    with the host costs sampled beside it."""
    from types import SimpleNamespace

    from microbench.analysis.beside import TPRowModel
    from microbench.engine.plan import Fusion
    model = object.__new__(TPRowModel)
    model.shard = SimpleNamespace(fusion=Fusion.ATTENTION, attention_launches=lambda b: 1)
    model.cfg = SimpleNamespace(shape=PRESETS["tiny"], context=16)
    model.world, model.elt, model.profile = 2, 2, _profile()
    row = dict(bs=4, padded_bs=4, eager_step_us=300.0, graph_step_us=100.0, speedup=3.0)
    model.ar = None
    model.predict(row, {})
    assert "predicted_speedup" not in row
    model.ar = AR
    model.predict(row, {})
    cheap = row["predicted_eager_step_us"]
    assert row["speedup_error"] == pytest.approx(row["predicted_speedup"] / 3.0 - 1)
    row.update(op_host_us={"all_reduce": 45.0}, piece_glue_us=7.0)   # sampled beside the row
    model.predict(row, {})
    assert row["predicted_eager_step_us"] > cheap
