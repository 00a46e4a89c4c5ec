"""The analytic model on hand-computed cases, and what `microbench model` computes."""
import pytest

from microbench.analysis import model as mdl
from microbench.engine.shapes import PRESETS
from microbench.analysis.model_rows import model_rows, resolve_profile, run_separate_rows
from microbench.engine.plan import Fusion, step_bytes, step_kernels

TINY = PRESETS["tiny"]


def profile(**kw):
    base = dict(name="test", source="test", copy_bw=1e30, matmul_flops=1e30,
                launch_host_us=dict(torch=10.0, cublas=10.0, triton=10.0), kernel_min_us=1.0,
                replay_host_us=7.0, replay_gpu_fixed_us=2.0, sync_us=0.0, n_input_copies=3)
    base.update(kw)
    return mdl.DeviceProfile(**base)


def test_launch_bound_case_by_hand():
    p = profile()
    n = len(step_kernels(TINY, 1, 8))
    # Every kernel takes 1 us on the GPU but 10 us to enqueue: the GPU idles between launches,
    # and the step ends 1 us after the last launch.
    assert mdl.eager_step_us(TINY, 1, 8, p) == pytest.approx(10 * n + 1)
    # Graph: 3 input copies (30 us) + one replay call (7) + replay start (2) + n nodes of 1 us.
    assert mdl.graph_step_us(TINY, 1, 8, p) == pytest.approx(30 + 7 + 2 + n)
    sp = mdl.predict(TINY, 1, 8, p)["predicted_speedup"]
    assert sp == pytest.approx((10 * n + 1) / (39 + n))


def test_bandwidth_bound_case_by_hand():
    # Free launches, 1 GB/s: each kernel takes bytes/1e9 s and the GPU never waits.
    p = profile(copy_bw=1e9, kernel_min_us=0.0, launch_host_us=dict(torch=0.0, cublas=0.0, triton=0.0),
                replay_host_us=0.0, replay_gpu_fixed_us=0.0)
    total_us = step_bytes(TINY, 4, 8) / 1e9 * 1e6
    assert mdl.eager_step_us(TINY, 4, 8, p) == pytest.approx(total_us)
    assert mdl.graph_step_us(TINY, 4, 8, p) == pytest.approx(total_us)
    assert mdl.predict(TINY, 4, 8, p)["predicted_speedup"] == pytest.approx(1.0)


def test_padding_costs_the_padded_size():
    p = profile(copy_bw=1e9, kernel_min_us=0.0)
    assert mdl.graph_step_us(TINY, 37, 8, p, padded=64) == pytest.approx(
        mdl.graph_step_us(TINY, 64, 8, p))
    assert mdl.graph_step_us(TINY, 37, 8, p, padded=64) > mdl.graph_step_us(TINY, 37, 8, p)


def test_crossover_matches_brute_force():
    shape = PRESETS["opt-125m"]
    p = profile(copy_bw=2e12, matmul_flops=5e14, kernel_min_us=2.0,
                launch_host_us=dict(torch=4.0, cublas=6.0, triton=8.0))
    c = mdl.crossover(shape, 512, p, below=1.2)
    sp = lambda b: mdl.predict(shape, b, 512, p)["predicted_speedup"]
    assert c is not None and sp(c) < 1.2 <= sp(c - 1)
    assert sp(1) > sp(c)


def test_profile_sources(tmp_path):
    with pytest.raises(ValueError, match="--profile, --gpu"):
        resolve_profile(None, None, None, None, None)
    p = resolve_profile(None, "L4", None, None, 3.0)
    assert p.copy_bw == 300e9 and p.launch_host_us["triton"] == 3.0 and "datasheet" in p.source
    p = resolve_profile(None, None, 2000, 500, None)
    assert p.copy_bw == 2e12 and p.matmul_flops == 5e14
    with pytest.raises(ValueError, match="--profile: x holds no launch"):
        resolve_profile(dict(env={}), None, None, None, None, run_name="x")
    from click.testing import CliRunner

    from microbench.cli import main
    r = CliRunner().invoke(main, ["model", "--profile", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--profile" in r.output


def test_big_models_gain_less():
    p = mdl.datasheet_profile("H100")
    small = model_rows(PRESETS["opt-125m"], (1,), 512, "vllm", p)["rows"][0]["predicted_speedup"]
    big = model_rows(PRESETS["llama-70b"], (1,), 512, "vllm", p)["rows"][0]["predicted_speedup"]
    assert small > 1.5 and big < 1.1


def test_off_ladder_batch_is_eager_in_the_model():
    p = mdl.datasheet_profile("H100")
    r = model_rows(TINY, (3, 700), 64, "1,2,4", p)["rows"]
    assert r[0]["padded_bs"] == 4 and r[1]["padded_bs"] is None and r[1]["predicted_speedup"] == 1.0


def test_launch_us_overrides_measured_op_costs():
    import json
    launch = dict(replay_fit=dict(gpu_fixed_us=2.0), copy=dict(bytes_per_s=3e12),
                  matmul=dict(flops_per_s=7e14), host_us=dict(torch=dict(median=9.0)),
                  gpu_us_per_kernel=dict(torch=dict(median=1.0)),
                  replay={"1": dict(host_us=dict(median=4.0))},
                  ops_host_us=dict(rmsnorm=dict(median=50.0)))
    run = json.loads(json.dumps(dict(kind="sweep", config={}, env={}, launch=launch)))  # as saved
    p = resolve_profile(run, None, None, None, None)
    assert p.op_host_us["rmsnorm"] == 50.0
    q = resolve_profile(run, None, None, None, 1.0)
    assert q.op_host_us == {} and mdl.eager_step_us(TINY, 1, 8, q) < mdl.eager_step_us(TINY, 1, 8, p)


def test_measured_runs_sit_beside_predictions():
    from microbench.analysis.model_rows import attach_measured
    from microbench.report.model_table import model_table
    p = mdl.datasheet_profile("H100")
    res = model_rows(TINY, (1, 4), 64, "vllm", p)
    run = dict(kind="sweep", config=dict(preset="tiny", context=64),
               rows=[dict(bs=1, eager_step_us=900.0, graph_step_us=300.0, speedup=3.0)])
    out = attach_measured(res, run)
    r1, r4 = out["rows"]
    assert r1["measured_speedup"] == 3.0
    assert r1["speedup_error"] == pytest.approx(r1["predicted_speedup"] / 3.0 - 1)
    assert "measured_speedup" not in r4
    assert "measured" in model_table(out).splitlines()[1]
    other = dict(run, config=dict(preset="tiny", context=128))
    assert "measured_speedup" not in attach_measured(model_rows(TINY, (1,), 64, "vllm", p), other)["rows"][0]
    # a sweep row that measured its own host costs carries its in-row prediction beside
    run["rows"][0].update(op_host_us={"qkv_proj": 20.0}, predicted_speedup=3.3)
    out = attach_measured(model_rows(TINY, (1, 4), 64, "vllm", p), run)
    assert out["rows"][0]["row_predicted_speedup"] == 3.3
    assert out["rows"][0]["row_speedup_error"] == pytest.approx(0.1)
    text = model_table(out)
    assert "in-row pred" in text.splitlines()[1] and "+10%" in text.splitlines()[3]


def test_a_runs_graph_gpu_time_and_families_sit_beside_the_models():
    from microbench.analysis.model_rows import attach_measured
    from microbench.report.model_table import model_table
    p = mdl.datasheet_profile("H100")
    res = model_rows(TINY, (1, 4), 64, "vllm", p)
    r1 = res["rows"][0]
    fam = r1["graph_gpu_us_by_family"]
    # the families are the graph's kernels, each once: with the replay's fixed GPU cost they
    # are the GPU time the graph step is predicted from
    host = p.replay_host_us + p.n_input_copies * p.host_us("torch") + p.sync_us
    assert set(fam) == {"skinny", "attention", "small"}
    assert r1["graph_gpu_us"] == pytest.approx(p.replay_gpu_fixed_us + sum(fam.values()))
    assert r1["graph_gpu_us"] == pytest.approx(r1["predicted_graph_step_us"] - host)
    # bs 3 replays the graph of 4, whose attention runs as separate kernels: the families are
    # that graph's kernels, not those of bs 3's eager step
    r3 = model_rows(TINY, (3,), 64, "vllm", p, separate_rows=[4])["rows"][0]
    assert r3["padded_bs"] == 4
    assert r3["graph_gpu_us"] == pytest.approx(r3["predicted_graph_step_us"] - host)
    assert sum(r3["graph_gpu_us_by_family"].values()) != pytest.approx(r3["gpu_busy_us"])
    row1 = dict(bs=1, padded_bs=1, eager_step_us=900.0, graph_step_us=300.0, speedup=3.0,
                graph_gpu_us=250.0)
    run = dict(kind="sweep", config=dict(preset="tiny", context=64), rows=[row1],
               graph_family_bw={"1": {"skinny": dict(us=200.0), "attention": dict(us=80.0),
                                      "other": dict(us=3.0)}})
    out = attach_measured(res, run)
    assert out["rows"][0]["measured_graph_gpu_us"] == 250.0
    assert out["rows"][0]["measured_graph_gpu_us_by_family"] == dict(skinny=200.0, attention=80.0,
                                                                    other=3.0)
    assert "measured_graph_gpu_us" not in out["rows"][1]      # bs 4 was not measured
    line = next(l for l in model_table(out).splitlines() if l.startswith("  bs 1: GPU"))
    total = r1["graph_gpu_us"]
    assert line.startswith(f"  bs 1: GPU {total:.0f} / 250 ({total / 250 - 1:+.0%})")
    # every family either side has names: one the model has no kernels of, one the run lacks
    assert f"skinny {fam['skinny']:.0f} / 200" in line and f"attention {fam['attention']:.0f} / 80" in line
    assert "other - / 3" in line and f"small {fam['small']:.0f} / -" in line
    # under --repeat the GPU figures are the first process's, measured beside its profile
    rep = dict(run, rows=[dict(row1, graph_gpu_us=240.0)],
               repeats=dict(first_rows=[dict(row1, graph_gpu_us=260.0)]))
    assert attach_measured(model_rows(TINY, (1,), 64, "vllm", p), rep)["rows"][0][
        "measured_graph_gpu_us"] == 260.0
    # a run whose row replayed another graph than the model's (another ladder) is not compared
    padded = dict(run, rows=[dict(row1, bs=3, padded_bs=3)],
                  graph_family_bw={"3": run["graph_family_bw"]["1"]})
    other = attach_measured(model_rows(TINY, (3,), 64, "vllm", p), padded)
    assert other["rows"][0]["padded_bs"] == 4
    assert "measured_graph_gpu_us" not in other["rows"][0]
    assert "measured_graph_gpu_us_by_family" not in other["rows"][0]
    assert "measured_speedup" not in other["rows"][0]          # nor are the speedups
    assert "a graph's GPU us" not in model_table(other)
    # nor a row that ran eagerly (no graph captured its size): it has no graph to predict
    eager = model_rows(TINY, (2,), 64, "1", p)   # ladder "1": bs 1 only
    assert eager["rows"][0]["padded_bs"] is None and eager["rows"][0]["graph_gpu_us"] is None
    no_graph = attach_measured(eager, dict(run, rows=[dict(row1, bs=2, padded_bs=None)],
                                           graph_family_bw={"2": run["graph_family_bw"]["1"]}))
    assert "measured_graph_gpu_us" not in no_graph["rows"][0]
    assert "a graph's GPU us" not in model_table(no_graph)


def test_run_fusion_reads_the_plan_a_run_measured():
    from microbench.analysis.model_rows import run_fusion
    assert run_fusion({"decoder": {"fusion": 1}}) == Fusion.MATMULS       # the record's plan
    assert run_fusion(None) == Fusion.ATTENTION                             # no run: today's
    # runs from before the record: told apart by the wrappers their host costs came through
    assert run_fusion({"launch": {"ops_host_us": {"rope": {}, "store_kv": {}}}}) == 0
    assert run_fusion({"launch": {"ops_host_us": {"rope_store_kv": {}}}}) == 1
    assert run_fusion({"launch": {}}) == 2


def test_the_plan_a_run_recorded_sets_the_skinny_rows():
    """A run whose decoder ran skinny up to one row is modelled with cuBLAS at four rows, as
    it ran, not with today's FAST_ROWS."""
    from microbench.analysis.model_rows import run_fast_rows
    from microbench.engine.plan import FAST_ROWS, SKINNY, step_kernels
    assert run_fast_rows({"decoder": {"fusion": 2, "fast_rows": 1}}) == 1
    assert run_fast_rows({"decoder": {"fusion": 2}}) == run_fast_rows(None) == FAST_ROWS
    names = lambda fr: {k.name for k in step_kernels(TINY, 4, 64, fast_rows=fr)}
    assert "qkv_proj" + SKINNY in names(16) and "qkv_proj" in names(1)
    p = mdl.DeviceProfile(name="x", source="t", copy_bw=3e12, matmul_flops=7e14,
                          launch_host_us=dict(torch=10.0, cublas=20.0, triton=20.0))
    one = model_rows(TINY, (1, 4), 64, "vllm", p, fast_rows=1)
    assert one["fast_rows"] == 1
    assert one["rows"][1]["kernels"] > model_rows(TINY, (1, 4), 64, "vllm", p)["rows"][1]["kernels"]
    assert one["rows"][0]["kernels"] == model_rows(TINY, (1, 4), 64, "vllm", p)["rows"][0]["kernels"]


def test_fused_and_unfused_plans_give_different_predictions():
    p = mdl.DeviceProfile(name="x", source="t", copy_bw=3e12, matmul_flops=7e14,
                          launch_host_us=dict(torch=10.0, cublas=20.0, triton=20.0))
    fused = mdl.predict(TINY, 1, 64, p)
    plain = mdl.predict(TINY, 1, 64, p, fusion=Fusion.UNFUSED)
    assert fused["kernels"] < plain["kernels"]
    assert fused["predicted_eager_step_us"] < plain["predicted_eager_step_us"]


def test_a_separate_attention_size_is_predicted_in_its_own_plan():
    """A size whose attention runs as separate kernels (plan.plan_at) is predicted in the
    MATMULS plan: the eager step at b in its plan, the graph at the padded size in that size's;
    model_rows and the crossover follow the sizes given."""
    from microbench.engine.plan import plan_at
    p = mdl.DeviceProfile(name="x", source="t", copy_bw=3e12, matmul_flops=7e14,
                          launch_host_us=dict(torch=10.0, cublas=20.0, triton=20.0))
    assert plan_at(Fusion.ATTENTION, 64, [64]) == Fusion.MATMULS
    assert plan_at(Fusion.ATTENTION, 60, [64]) == Fusion.ATTENTION
    assert plan_at(Fusion.UNFUSED, 64, [64]) == Fusion.UNFUSED
    fused = mdl.predict(TINY, 60, 64, p, padded=64)
    mixed = mdl.predict(TINY, 60, 64, p, padded=64, padded_fusion=Fusion.MATMULS)
    assert mixed["predicted_eager_step_us"] == fused["predicted_eager_step_us"]
    assert mixed["predicted_graph_step_us"] != fused["predicted_graph_step_us"]
    assert mixed["predicted_graph_step_us"] == mdl.predict(
        TINY, 64, 64, p, fusion=Fusion.MATMULS)["predicted_graph_step_us"]
    rows = {r["bs"]: r for r in model_rows(TINY, [4, 64], 64, "vllm", p, separate_rows=[64])["rows"]}
    assert rows[64]["kernels"] == mdl.predict(TINY, 64, 64, p, fusion=Fusion.MATMULS)["kernels"]
    assert rows[4]["kernels"] == mdl.predict(TINY, 4, 64, p)["kernels"]
    # 60 pads to 64 (vLLM's sizes): eager in the fused plan, the graph in 64's
    rows = {r["bs"]: r for r in model_rows(TINY, [60], 64, "vllm", p, separate_rows=[64])["rows"]}
    assert rows[60]["padded_bs"] == 64
    assert rows[60]["predicted_graph_step_us"] == mixed["predicted_graph_step_us"]
    assert rows[60]["predicted_eager_step_us"] == fused["predicted_eager_step_us"]
    # every size separate: the crossover of the MATMULS plan; none: the fused plan's
    # (this profile's two plans cross under 4 and 4.5 at sizes that differ)
    for below in (4.0, 4.5):
        every = mdl.crossover(TINY, 64, p, below=below, separate_rows=range(1, 4097))
        fused_only = mdl.crossover(TINY, 64, p, below=below)
        assert every == mdl.crossover(TINY, 64, p, below=below, fusion=Fusion.MATMULS)
        assert every is not None and fused_only is not None and every != fused_only
    assert run_separate_rows({"decoder": {"separate_attention_rows": [32, 64]}}) == [32, 64]
    assert run_separate_rows({"decoder": {}}) == run_separate_rows(None) == []


def test_family_lines_time_kernels_by_hand():
    """With measured lines, a kernel takes its family's fixed cost plus its bytes at the
    family's bandwidth; the attention line holds the reduce (0 on its own); a family without a
    line falls back to the copy line."""
    from microbench.engine.plan import Kernel
    lines = dict(skinny=dict(fixed_us=3.0, bytes_per_s=2e12), attention=dict(fixed_us=5.0, bytes_per_s=1e12),
                 small=dict(fixed_us=2.5, bytes_per_s=None))
    p = profile(copy_bw=4e12, kernel_fixed_us=1.0, kernel_min_us=1.0, kernel_lines=lines)
    mm = Kernel("qkv_proj:skinny", "triton", 4_000_000, 0)
    assert mdl.family(mm) == "skinny" and mdl.kernel_time_us(mm, p) == pytest.approx(3.0 + 2.0)
    att = Kernel("decode_attention", "triton", 1_000_000, 0)
    assert mdl.kernel_time_us(att, p) == pytest.approx(5.0 + 1.0)
    assert mdl.kernel_time_us(Kernel("attention_reduce", "triton", 999, 0), p) == 0.0
    assert mdl.kernel_time_us(Kernel("rope_store_kv", "triton", 10_000, 0), p) == pytest.approx(2.5)
    cub = Kernel("o_proj", "cublas", 8_000_000, 0)     # no cublas line: the copy line
    assert mdl.family(cub) == "cublas" and mdl.kernel_time_us(cub, p) == pytest.approx(1.0 + 2.0)
    # a datasheet GPU drops the measured lines (they belong to the measured GPU)
    assert mdl.datasheet_profile("H200", p).kernel_lines == {}


def test_from_launch_reads_the_kernel_lines():
    launch = dict(replay_fit=dict(gpu_fixed_us=2.0), copy=dict(bytes_per_s=3e12),
                  matmul=dict(flops_per_s=7e14), host_us=dict(torch=dict(median=9.0)),
                  gpu_us_per_kernel=dict(torch=dict(median=1.0)),
                  replay={"1": dict(host_us=dict(median=4.0))},
                  kernel_lines=dict(cublas=dict(fixed_us=4.0, bytes_per_s=2.5e12, points=[])))
    p = mdl.DeviceProfile.from_launch(launch, "x", "y")
    assert p.kernel_lines == dict(cublas=dict(fixed_us=4.0, bytes_per_s=2.5e12))


def test_an_ops_own_points_replace_its_family_line_between_them():
    """A cuBLAS matmul timed at two batches is joined linearly in bytes between them, whatever
    the family line says; outside its points, and for ops never timed, the family line holds."""
    from microbench.engine.plan import Kernel
    lines = dict(cublas=dict(fixed_us=4.0, bytes_per_s=2e12, points=[
        dict(op="down_proj", b=2, bytes=4_000_000, us=7.0),
        dict(op="down_proj", b=8, bytes=6_000_000, us=9.0),
        dict(op="o_proj", b=2, bytes=1_000_000, us=4.2)]))
    launch = dict(replay_fit=dict(gpu_fixed_us=2.0), copy=dict(bytes_per_s=3e12),
                  matmul=dict(flops_per_s=7e14), host_us=dict(torch=dict(median=9.0)),
                  gpu_us_per_kernel=dict(torch=dict(median=1.0)),
                  replay={"1": dict(host_us=dict(median=4.0))}, kernel_lines=lines)
    p = mdl.DeviceProfile.from_launch(launch, "x", "y")
    assert p.kernel_points["down_proj"] == [(4_000_000, 7.0), (6_000_000, 9.0)]
    down = lambda n: mdl.kernel_time_us(Kernel("down_proj", "cublas", n, 0), p)
    assert down(5_000_000) == pytest.approx(8.0)            # halfway between its points
    assert down(4_000_000) == pytest.approx(7.0)
    assert down(8_000_000) == pytest.approx(4.0 + 4.0)      # past them: the line (4 + 8 MB / 2 TB/s)
    # a single point counts only at its own bytes
    assert mdl.kernel_time_us(Kernel("o_proj", "cublas", 1_000_000, 0), p) == pytest.approx(4.2)
    assert mdl.kernel_time_us(Kernel("o_proj", "cublas", 1_100_000, 0), p) == pytest.approx(4.55)
    assert mdl.kernel_time_us(Kernel("qkv_proj", "cublas", 2_000_000, 0), p) == pytest.approx(5.0)
    # the datasheet GPU keeps neither the lines nor the points
    assert mdl.datasheet_profile("H200", p).kernel_points == {}


def test_between_points():
    pts = [(1.0, 10.0), (3.0, 30.0), (3.0, 32.0), (5.0, 40.0)]
    assert mdl.between_points(pts, 2.0) == pytest.approx(20.0)
    assert mdl.between_points(pts, 4.0) == pytest.approx(36.0)
    assert mdl.between_points(pts, 0.5) is None and mdl.between_points(pts, 6.0) is None
    assert mdl.between_points([], 1.0) is None and mdl.between_points(None, 1.0) is None


def test_piece_glue_is_added_once_per_piece():
    p = profile()
    g = profile(piece_glue_us=7.0)
    n_pieces = TINY.n_layers + 1
    assert mdl.eager_step_us(TINY, 1, 8, g) == pytest.approx(mdl.eager_step_us(TINY, 1, 8, p) + 7.0 * n_pieces)
    assert mdl.graph_step_us(TINY, 1, 8, g) == mdl.graph_step_us(TINY, 1, 8, p)


def test_stream_gap_is_paid_where_the_gpu_is_the_bottleneck_only():
    n = len(step_kernels(TINY, 4, 8))
    # GPU-bound (free launches, 1 GB/s): every kernel after the first waits 0.5 us behind the
    # one before, the first starts at once; the graph step has no gap
    gpu = dict(copy_bw=1e9, kernel_min_us=0.0, launch_host_us=dict(torch=0.0, cublas=0.0,
               triton=0.0), replay_host_us=0.0, replay_gpu_fixed_us=0.0)
    p, q = profile(**gpu), profile(stream_gap_us=0.5, **gpu)
    assert mdl.eager_step_us(TINY, 4, 8, q) == pytest.approx(mdl.eager_step_us(TINY, 4, 8, p)
                                                             + 0.5 * (n - 1))
    assert mdl.graph_step_us(TINY, 4, 8, q) == mdl.graph_step_us(TINY, 4, 8, p)
    # launch-bound (10 us to enqueue, 1 us on the GPU): the GPU waits for every kernel, so a
    # gap shorter than that wait costs nothing
    assert mdl.eager_step_us(TINY, 1, 8, profile(stream_gap_us=0.5)) == pytest.approx(
        mdl.eager_step_us(TINY, 1, 8, profile()))


def test_stream_gap_from_the_queued_and_graph_timings_of_the_triton_launcher():
    launch = dict(replay_fit=dict(gpu_fixed_us=2.0), copy=dict(bytes_per_s=3e12),
                  matmul=dict(flops_per_s=7e14), host_us=dict(torch=dict(median=9.0)),
                  gpu_us_per_kernel=dict(torch=dict(median=1.0), triton=dict(median=1.5)),
                  gpu_us_per_kernel_queued=dict(torch=dict(median=9.0),
                                                triton=dict(median=2.25)),
                  replay={"1": dict(host_us=dict(median=4.0))})
    assert mdl.DeviceProfile.from_launch(launch, "x", "y").stream_gap_us == pytest.approx(0.75)
    # a queued figure under the graph's reads as no gap; a run without it (older) as none
    launch["gpu_us_per_kernel_queued"]["triton"]["median"] = 1.0
    assert mdl.DeviceProfile.from_launch(launch, "x", "y").stream_gap_us == 0.0
    del launch["gpu_us_per_kernel_queued"]
    assert mdl.DeviceProfile.from_launch(launch, "x", "y").stream_gap_us == 0.0
    # the gap belongs to the GPU measured, not to a datasheet one priced with its host
    measured = profile(stream_gap_us=0.75)
    assert mdl.datasheet_profile("L4", measured).stream_gap_us == 0.0


def test_measured_graph_host_replaces_the_launch_sum():
    p = profile()
    q = profile(graph_host_us=50.0)
    # 3 copies at 10 us + a 7 us replay call: 37 us of host, replaced by the measured 50
    assert mdl.graph_step_us(TINY, 1, 8, q) == pytest.approx(mdl.graph_step_us(TINY, 1, 8, p) + 13.0)


def test_kernel_lines_stay_with_the_preset_they_were_fitted_on():
    import json
    launch = dict(replay_fit=dict(gpu_fixed_us=2.0), copy=dict(bytes_per_s=3e12),
                  matmul=dict(flops_per_s=7e14), host_us=dict(torch=dict(median=9.0)),
                  gpu_us_per_kernel=dict(torch=dict(median=1.0)),
                  replay={"1": dict(host_us=dict(median=4.0))},
                  kernel_lines=dict(skinny=dict(fixed_us=1.0, bytes_per_s=1.6e12, points=[])))
    run = json.loads(json.dumps(dict(kind="sweep", config=dict(preset="opt-125m"), env={},
                                      launch=launch)))   # as saved
    same = resolve_profile(run, None, None, None, None, "opt-125m")
    other = resolve_profile(run, None, None, None, None, "llama-70b")
    assert same.kernel_lines and other.kernel_lines == {}
    assert "fitted on opt-125m" in other.source


def test_op_points_stay_with_the_context_they_were_timed_at():
    """Attention's points were timed on the run's context: at another context the lines
    price every op, at the same one the points stay; equal bytes average into one point."""
    import json
    pts = [dict(op="decode_attention", b=1, bytes=1_000_000, us=4.0),
           dict(op="decode_attention", b=2, bytes=1_000_000, us=6.0)]
    launch = dict(replay_fit=dict(gpu_fixed_us=2.0), copy=dict(bytes_per_s=3e12),
                  matmul=dict(flops_per_s=7e14), host_us=dict(torch=dict(median=9.0)),
                  gpu_us_per_kernel=dict(torch=dict(median=1.0)),
                  replay={"1": dict(host_us=dict(median=4.0))},
                  kernel_lines=dict(attention=dict(fixed_us=1.0, bytes_per_s=1e12, points=pts)))
    run = json.loads(json.dumps(dict(kind="sweep", config=dict(preset="opt-125m", context=512),
                                      env={}, launch=launch)))
    same = resolve_profile(run, None, None, None, None, "opt-125m", context=512)
    other = resolve_profile(run, None, None, None, None, "opt-125m", context=4096)
    assert same.kernel_points == {"decode_attention": [(1_000_000, 5.0)]}
    assert other.kernel_points == {} and other.kernel_lines
    assert "timed at context 512" in other.source
