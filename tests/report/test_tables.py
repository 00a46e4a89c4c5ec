"""Tables from saved runs: what `show` prints for each kind."""
import json

import pytest

from microbench.report.render import RenderError, render_run
from microbench.report.tables import kernels_table, sweep_table, table
from tests.report.runs import kernels_run, launch_run, reproduce_run, sweep_run


def test_table_aligns_columns():
    head, rule, row = table(["a", "bbb"], [["10", "2"]]).splitlines()
    assert (head, row) == (" a  bbb", "10    2") and set(rule) == {"─"} and len(rule) == len(head)


def test_sweep_table_has_header_rows_and_footer():
    out = sweep_table(sweep_run())
    assert out.splitlines()[0].startswith("GPU Test GPU | preset tiny | bfloat16 | mode full")
    assert "3.00" in out and "run took 1.5 s" in out


def test_footer_names_the_models_worst_error_and_its_batch():
    run = sweep_run()
    run["rows"][0]["speedup_error"], run["rows"][1]["speedup_error"] = 0.02, -0.081
    line = next(l for l in sweep_table(run).splitlines() if l.startswith("model:"))
    assert line.startswith("model: worst speedup error 8.1%, at bs 4 (`microbench model --profile`")
    # a run model --profile does not set beside its predictions (a TP sweep's) is not pointed there
    run["kind"] = "sweep-tp"
    from microbench.report.tables import closing_lines
    assert closing_lines(run)[0] == "model: worst speedup error 8.1%, at bs 4"


@pytest.mark.parametrize("rows, says", [([], None), ([64], " | cuBLASLt at 64 | "),
                                         ([32, 48, 128], " | cuBLASLt at 3 sizes, 32 to 128 | ")])
def test_sweep_header_names_the_sizes_whose_matmuls_ran_cublaslt(rows, says):
    run = sweep_run(decoder=dict(pdl_mode="early", cublaslt_rows=rows))
    head = sweep_table(run).splitlines()[0]
    assert "| PDL early | " in head
    assert (says in head) if says else "cuBLASLt" not in head
    assert "splits" not in head


def test_sweep_header_names_the_sizes_whose_attention_splits_were_capped_or_tiles_halved():
    run = sweep_run(decoder=dict(pdl_mode="early", cublaslt_rows=[64], capped_split_rows=[16],
                                 half_tile_rows=[1], separate_attention_rows=[32, 64]))
    head = sweep_table(run).splitlines()[0]
    assert (" | cuBLASLt at 64 | attention splits capped at 16 | attention tiles halved at 1 | "
            "attention separate at 2 sizes, 32 to 64 | ") in head
    run = sweep_run(decoder=dict(pdl_mode="early", half_tile_rows=[], separate_attention_rows=[]))
    assert "halved" not in sweep_table(run).splitlines()[0]
    assert "separate" not in sweep_table(run).splitlines()[0]


def test_sweep_table_shows_extra_arms_in_recorded_order():
    run = sweep_run(arms={"eager": {}, "graph": {}, "torch-graph": {}, "compile": {}})
    run["rows"][0].update(torch_graph_step_us=400.0, compile_step_us=350.0)
    head = sweep_table(run).splitlines()[1]
    assert head.index("torch-graph us") < head.index("compile us") < head.index("speedup")
    assert "400.0" in sweep_table(run) and "350.0" in sweep_table(run)


def test_footer_judges_the_published_bundle_and_the_graphs_alone():
    run = sweep_run(shape_check=dict(held=False, why="speedup rises with batch size beyond its interval"),
                    shape_check_engine=dict(held=True, why="held"))
    out = sweep_table(run)
    assert "engine-eager against graph, the bundle published: held" in out
    assert "eager against graph, the graphs alone: NOT held: speedup rises" in out
    assert "the bundle published" not in sweep_table(sweep_run(shape_check=dict(held=True)))


def test_footer_says_what_the_cpu_pin_did():
    run = sweep_run()
    assert "host CPU" not in sweep_table(run)          # no row pinned (--no-pin-cpu, old runs)
    run["rows"][0]["host_pin"] = dict(cpus_used=2, moves=3, checks=40, loop_us=101.4,
                                      loop_us_range=[96.0, 180.0])
    assert ("host CPU: each row's rotation kept on a quick CPU (3 moves in 40 checks; probe loop "
            "per row 101 us, range 96-180)") in sweep_table(run)
    # with the host's reference: what waiting for a slow host did, summed over the rows
    run["rows"][0]["host_pin"].update(reference_us=95.2, waited_s=1.5, slow_rounds=0)
    assert "range 96-180; host's quick loop 95 us, waited 1.5 s for a slow host)" in sweep_table(run)
    run["rows"][0]["host_pin"].update(slow_rounds=4)
    assert "waited 1.5 s for a slow host, 4 rounds on a slow host)" in sweep_table(run)
    # with rounds dropped where the host was not quick around them
    run["rows"][0]["host_pin"].update(quiet_tol=1.04, rounds=90, quiet_rounds=35)
    assert ("4 rounds on a slow host; 35 of 90 rounds counted, the loop within 1.04x of quick "
            "around them)") in sweep_table(run)
    run["rows"][0]["host_pin"].update(quiet_fallback=True)
    assert "around them, 1 row short of them kept every round)" in sweep_table(run)
    # a row sampled again after a slow host outlasted its wait (sweep.measure_until_quick)
    run["rows"][0]["host_pin"].update(retried_slow_rounds=[12, 3])
    assert ("kept every round; sampled again after a slow host outlasted the wait: bs 1 "
            "(2 tries dropped))") in sweep_table(run)


def test_repeat_line_counts_both_shape_verdicts():
    run = sweep_run(repeats=dict(k=3, max_spread=0.04, shape_held=[False, False, True],
                                 engine_shape_held=[True, True, False]))
    assert "shape held in 1 of 3 (engine-eager against graph: in 2 of 3)" in sweep_table(run)
    run["repeats"].pop("engine_shape_held")
    assert "shape held in 1 of 3\n" in sweep_table(run)
    assert "widest at bs" not in sweep_table(run)      # rows merged before the per-process medians
    assert "each row is the process" not in sweep_table(run)   # merged before rows were picked
    run["rows"][0]["repeat_process"] = 2
    assert "each row is the process with its median speedup: bs 1 from process 2;" in sweep_table(run)
    # the widest row's per-process medians beside each process's CPU speed
    run["rows"][0].update(speedup_repeat_spread=0.04, eager_step_us_repeats=[559.2, 593.7, 518.2],
                          graph_step_us_repeats=[270.1, 271.0, 270.4],
                          host_loop_us_repeats=[91.5, 97.0, 84.9])
    assert ("widest at bs 1: eager 559.2/593.7/518.2 us, graph 270.1/271.0/270.4 us per process; "
            "its CPU's probe loop 91.5/97.0/84.9 us") in sweep_table(run)
    # a row another process sampled again after a slow host, named as the processes started
    assert "sampled again" not in sweep_table(run)
    run["repeats"]["kept"] = [1, 2, 4]
    run["rows"][0]["host_pin_repeats"] = [{}, None, dict(slow_rounds=0, retried_slow_rounds=[12])]
    assert ("sampled again after a slow host outlasted the wait: process 4 bs 1 (1 try dropped)"
            in sweep_table(run))


def test_kernels_table():
    out = kernels_table(kernels_run())
    assert "kernels at tiny decode shapes on Test GPU" in out and "rmsnorm" in out


@pytest.mark.parametrize("make, expect", [
    (sweep_run, "speedup"), (launch_run, "graph replay of n tiny-kernel nodes"),
    (kernels_run, "of copy"), (reproduce_run, "speedup-fade: HELD"),
])
def test_render_each_kind(make, expect):
    assert expect in render_run(make())
    assert json.loads(render_run(make(), as_json=True))["kind"] == make()["kind"]


def test_render_error_is_one_line():
    run = launch_run()
    del run["launch"]["host_us"]["torch"]["median"]   # deeper than the schema checks
    with pytest.raises(RenderError) as e:
        render_run(run)
    assert "\n" not in str(e.value) and "launch run is incomplete" in str(e.value)


def test_repeat_footer_reads_the_first_process_rows_beside_its_profile():
    """Under --repeat the footer's profile lines are the first process's: its GPU busy time
    beside its own eager step, not beside the merged row's (from another process)."""
    run = sweep_run(eager_gpu_busy_us=306.0)
    run["rows"][0].update(eager_step_us=530.0, repeat_process=2)
    first = [dict(r) for r in run["rows"]]
    first[0].update(eager_step_us=612.0)
    run["repeats"] = dict(k=3, max_spread=0.05, shape_held=[True] * 3, first_rows=first)
    text = sweep_table(run)
    assert "eager step at bs 1: GPU busy 306 us of a 612 us step" in text
    assert ("bs 1 from process 2; the lines below are process 1's, except the shape checks and "
            "the model's error, judged on these rows") in text
    run["repeats"].pop("first_rows")          # runs merged before first_rows: the table's rows
    assert "GPU busy 306 us of a 530 us step" in sweep_table(run)


def test_footer_gives_the_kernel_lines_and_each_batchs_mix_factor():
    """The footer prints the model's family lines and, where the run timed a layer's ops beside
    their neighbours, the mix factor per line batch (runs from before it print none)."""
    from tests.report.runs import LAUNCH
    pts = [dict(op="qkv_proj:skinny", b=1, bytes=1e6, us=3.3, alone_us=3.0, mix=1.1),
           dict(op="lm_head:skinny", b=1, bytes=9e6, us=9.0),
           dict(op="qkv_proj:skinny", b=16, bytes=2e6, us=4.6, alone_us=4.0, mix=1.15)]
    launch = dict(LAUNCH, kernel_lines=dict(skinny=dict(fixed_us=2.0, bytes_per_s=2.5e12,
                                                        points=pts)))
    out = sweep_table(sweep_run(launch=launch))
    assert "model's kernel lines (GPU us in a graph): skinny 2.0 + bytes / 2.50 TB/s" in out
    assert "beside their neighbours over alone (mix factor): bs 1 1.10, bs 16 1.15" in out
    for p in pts:
        p.pop("mix", None)
    assert "mix factor" not in sweep_table(sweep_run(launch=launch))


def test_footer_and_launch_table_give_the_kernels_queued_in_a_stream():
    """A run that timed its launchers' kernels queued in a stream prints them beside the graph
    figure, and the footer the gap the model's eager pipeline adds; older runs print neither."""
    from microbench.report.tables import launch_table
    from tests.report.runs import LAUNCH
    launch = dict(LAUNCH, gpu_us_per_kernel=dict(torch=dict(median=1.0), triton=dict(median=1.5)),
                  gpu_us_per_kernel_queued=dict(torch=dict(median=2.5), triton=dict(median=2.25)))
    out = sweep_table(sweep_run(launch=launch, profile=dict(stream_gap_us=0.75)))
    assert "eager kernels the GPU meets queued in a stream: +0.75 us each over a graph node" in out
    assert "queued in a stream" not in sweep_table(sweep_run(launch=LAUNCH))
    row = next(ln for ln in launch_table(launch).splitlines() if ln.strip().startswith("torch"))
    assert row.split()[-2:] == ["1.00", "2.50"]
    row = next(ln for ln in launch_table(LAUNCH).splitlines() if ln.strip().startswith("torch"))
    assert row.split()[-2:] == ["1.00", "-"]


def test_sweep_header_names_each_pdl_mode_with_its_sizes_where_the_sizes_differ():
    mixed = sweep_run(decoder=dict(pdl=True, pdl_mode="early",
                                   pdl_rows={"early": [1, 8, 32, 64, 128], "late": [2, 4, 16]}))
    assert (" | PDL early at 5 sizes, 1 to 128 | PDL late at 2, 4, 16 | "
            in sweep_table(mixed).splitlines()[0])
    one = sweep_run(decoder=dict(pdl=True, pdl_mode="late", pdl_rows={"late": [1, 2, 4, 8]}))
    head = sweep_table(one).splitlines()[0]
    assert " | PDL late | " in head and " at " not in head.split("PDL")[1].split("|")[0]


def test_kernel_time_notes_name_pdl_only_at_the_sizes_whose_graph_launched_with_it():
    from microbench.report.tables import family_bw_lines, launched_pdl
    fam = {"skinny": dict(bytes=1e6, us=10.0, copy_share=0.5, us_over=5.0, us_at_copy=5.0)}
    # bs 3 is padded to 4, captured without PDL (bs 3's own eager mode is early); bs 1 early
    run = sweep_run(decoder=dict(pdl=True, pdl_rows={"early": [1, 3], "off": [4]}),
                    rows=[dict(sweep_run()["rows"][0], bs=1, padded_bs=1),
                          dict(sweep_run()["rows"][1], bs=3, padded_bs=4)],
                    graph_family_bw={"1": fam, "3": fam})
    assert launched_pdl(run, "1") and not launched_pdl(run, "3")
    one, three = family_bw_lines(run)
    assert one.endswith("without PDL, each alone") and "PDL" not in three
    # a run before modes per size: its one flag
    old = sweep_run(decoder=dict(pdl=True, pdl_mode="early"), graph_family_bw={"4": fam})
    assert launched_pdl(old, "4") and family_bw_lines(old)[0].endswith("each alone")
