"""`microbench startup` (bench.startup, report.startup_table, cli_startup): the cold and warm
processes' orchestration with a fake child on the CPU, its failures, the table, the command's
errors; on a GPU, the real child end to end (tiny preset, to stay cheap)."""
import json
import os
import sys

import pytest
from click.testing import CliRunner

from microbench.bench import startup as st
from microbench.cli import main
from microbench.report.formats import render
from microbench.report.index import headline
from microbench.report.record import load_run, write_run
from microbench.report.schema import RunFileError
from microbench.report.startup_table import startup_doc

gpu = pytest.mark.gpu

# A child that behaves like a start-up: slower when its cache folder is empty, and fills it.
FAKE = r"""
import json, os
d = os.environ["TORCHINDUCTOR_CACHE_DIR"]
assert os.environ["TRITON_CACHE_DIR"].startswith(os.path.dirname(d))
warm = os.path.exists(os.path.join(d, "marker"))
os.makedirs(d, exist_ok=True)
open(os.path.join(d, "marker"), "w").write("x")
print("a line the child printed first")
print(json.dumps(dict(import_s=0.1, build_s=0.2, capture_s=0.5 if warm else 1.0,
                      compile_setup_s={"1": 0.5 if warm else 4.0, "4": 0.25 if warm else 3.0},
                      cache_counters=dict(fxgraph_cache_hit=2 * warm, fxgraph_cache_miss=2 * (not warm)),
                      cudagraph_skips=0, env=dict(gpu="Fake GPU", torch="t", triton="tr"))))
"""


def fake_cmd(script=FAKE):
    return [sys.executable, "-c", script]


def test_cold_then_warm_on_one_new_cache_folder():
    cfg = st.StartupConfig(bs=(1, 4), warm_runs=2)
    said = []
    run = st.measure_startup(cfg, command=fake_cmd(), say=said.append)
    assert [r["cache"] for r in run["rows"]] == ["cold", "warm", "warm"]
    cold, warm = run["rows"][0], run["rows"][1]
    assert cold["compile_s"] == 7.0 and warm["compile_s"] == 0.75
    assert cold["compile_setup_s"] == {1: 4.0, 4: 3.0}
    assert cold["fxgraph_cache_miss"] == 2 and warm["fxgraph_cache_hit"] == 2
    assert all(r["wall_s"] > 0 for r in run["rows"])
    s = run["summary"]
    assert s["cold_compile_s"] == 7.0 and s["warm_compile_s"] == 0.75
    assert s["compile_cold_over_warm"] == pytest.approx(7.0 / 0.75)
    assert s["cold_capture_s"] == 1.0 and s["warm_capture_s"] == 0.5
    assert run["env"]["gpu"] == "Fake GPU" and run["kind"] == "startup"
    folder = said[0].split("caches in ")[1].rstrip(")")
    assert not os.path.exists(folder)                        # the cache folder is removed after
    assert len({s.split("caches in ")[1] for s in said if "caches in" in s}) == 1


def test_the_run_records_the_parents_command_not_the_childs():
    argv = ["/venv/bin/microbench", "startup", "--preset", "opt-125m", "--warm-runs", "1"]
    child = FAKE.replace("env=dict(gpu=", "env=dict(command='startup.py --child {}', date='x', gpu=")
    run = st.measure_startup(st.StartupConfig(), command=fake_cmd(child), argv=argv)
    env = run["env"]
    assert env["command"] == "microbench startup --preset opt-125m --warm-runs 1"
    assert env["gpu"] == "Fake GPU" and env["torch"] == "t"       # the rest as the child saw it
    assert env["date"] != "x" and env["date"].endswith("+00:00")
    assert run["child_command"].endswith(" -c " + child)
    assert st.command_line(st.child_command(st.StartupConfig())).startswith(
        os.path.basename(sys.executable) + " -m microbench.bench.startup --child {")


def test_cache_env_points_both_caches_into_the_folder():
    env = st.cache_env("/tmp/x", base={"PATH": "/bin", "TRITON_CACHE_DIR": "/old"})
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/x/inductor"
    assert env["TRITON_CACHE_DIR"] == "/tmp/x/triton" and env["PATH"] == "/bin"
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"


def test_child_command_round_trips_the_config():
    cfg = st.StartupConfig(preset="tiny", bs=(1, 2), arm="torch-compile")
    cmd = st.child_command(cfg)
    assert cmd[:4] == [sys.executable, "-m", "microbench.bench.startup", "--child"]
    d = json.loads(cmd[4])
    assert st.StartupConfig(**dict(d, bs=tuple(d["bs"]))) == cfg


@pytest.mark.parametrize("script, why", [
    ("import sys; print('boom', file=sys.stderr); sys.exit(3)", "failed: boom"),
    ("print('not json')", "printed no result: not json"),
    ("pass", "failed: exit code 0"),
])
def test_a_failed_child_is_one_line(script, why):
    with pytest.raises(st.StartupFailed, match=why):
        st.run_child(fake_cmd(script), dict(os.environ), 30)


def test_a_child_past_its_time_is_stopped():
    with pytest.raises(st.StartupFailed, match="ran past --timeout 0.5 s"):
        st.run_child(fake_cmd("import time; time.sleep(5)"), dict(os.environ), 0.5)


@pytest.mark.parametrize("kw, option", [
    (dict(preset="gpt-5"), "--preset"), (dict(bs=()), "--bs"), (dict(bs=(0,)), "--bs"),
    (dict(arm="graph"), "--arm"), (dict(context=0), "--context"), (dict(dtype="int8"), "--dtype"),
    (dict(warm_runs=0), "--warm-runs"), (dict(timeout_s=0), "--timeout"),
])
def test_config_errors_name_their_option(kw, option):
    with pytest.raises(ValueError, match=f"^{option}: "):
        st.StartupConfig(**kw).validate()


def test_child_main_usage():
    assert st.main([]) == 2 and st.main(["--child"]) == 2


def test_table_shows_cold_and_warm():
    run = st.measure_startup(st.StartupConfig(bs=(1, 4)), command=fake_cmd())
    text = render(startup_doc(run), "markdown")
    assert "GPU Fake GPU | preset opt-125m | bfloat16 | arm compile | bs 1,4" in text
    assert "| cold |" in text and "| warm |" in text and "0/2" in text and "2/0" in text
    assert "compile set-up: 7.0 s cold, 0.8 s warm (9.3x); graph capture: 1.0 s cold, 0.5 s warm" in text
    assert "published: 130 s cold, 16 s warm (vLLM start-up of Qwen3.5-9B" in text
    data = json.loads(render(startup_doc(run), "json"))
    assert [r["cache"] for r in data] == ["cold", "warm"]


# ---- the saved run: schema, show, index ------------------------------------------------------
COMMITTED = os.path.join(os.path.dirname(__file__), "..", "..", "results", "h200",
                         "20261130-125936-startup-opt-125m-h200")


def saved_run(tmp_path):
    run = st.measure_startup(st.StartupConfig(bs=(1, 4)), command=fake_cmd(),
                             argv=["microbench", "startup", "--bs", "1,4"])
    return write_run(tmp_path / "s", run, csv_name="startup.csv")


def test_a_saved_run_loads_shows_and_has_a_headline(tmp_path):
    d = saved_run(tmp_path)
    run = load_run(d)
    assert run["kind"] == "startup" and run["env"]["command"] == "microbench startup --bs 1,4"
    assert headline(run) == "compile set-up 7.0 s cold, 0.8 s warm; capture 1.0 s cold, 0.5 s warm"
    r = CliRunner().invoke(main, ["show", str(d)])
    assert r.exit_code == 0 and "compile set-up: 7.0 s cold, 0.8 s warm" in r.output
    r = CliRunner().invoke(main, ["show", str(d), "--format", "csv"])
    assert r.exit_code == 0 and r.output.splitlines()[1].startswith("cold,")


def test_headline_without_warm_rows_or_summary():
    assert headline(dict(kind="startup", config={}, summary=dict(
        cold_compile_s=22.14, cold_capture_s=4.9, cold_wall_s=40))) == \
        "compile set-up 22.1 s cold; capture 4.9 s cold"
    assert headline(dict(kind="startup", config={}, summary="x")) == "no summary"


def _drop(d, *path):
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]


@pytest.mark.parametrize("path, value, message", [
    (("summary",), None, "missing 'summary'"),
    (("summary", "cold_compile_s"), None, "'summary' has no 'cold_compile_s'"),
    (("rows", 0, "compile_s"), "slow", "'rows[0].compile_s' is a string"),
    (("rows", 1, "cache"), None, "'rows[1]' has no 'cache'"),
    (("config", "bs"), "1", "'config.bs' is a string"),
    (("published", "cold_s"), None, "'published' has no 'cold_s'"),
    (("rows",), [], "'rows' is empty"),
])
def test_a_corrupted_run_is_one_line_and_exit_2(tmp_path, path, value, message):
    d = saved_run(tmp_path)
    data = json.loads((d / "run.json").read_text())
    if value is None:
        _drop(data, *path)
    else:
        target = data
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
    (d / "run.json").write_text(json.dumps(data))
    with pytest.raises(RunFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_run(d)
    r = CliRunner().invoke(main, ["show", str(d)])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.output


@pytest.mark.skipif(not os.path.isdir(COMMITTED), reason="the committed H200 run is not here")
def test_the_committed_h200_run_shows():
    r = CliRunner().invoke(main, ["show", COMMITTED])
    assert r.exit_code == 0, r.output
    assert "GPU NVIDIA H200 | preset opt-125m" in r.output and "cold" in r.output
    assert headline(load_run(COMMITTED)).startswith("compile set-up ")


@pytest.mark.parametrize("args", [("--bs", "0"), ("--warm-runs", "0"), ("--arm", "graph"),
                                  ("--timeout", "0"), ("--preset", "gpt-5"), ("--bs", "1,,2")])
def test_bad_input_is_one_line_and_exit_2(args, tmp_path):
    r = CliRunner().invoke(main, ["startup", *args, "--out", str(tmp_path)])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output


def test_without_a_gpu_it_says_so(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    r = CliRunner().invoke(main, ["startup", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "needs a CUDA GPU" in r.output


@gpu
def test_real_start_up_cold_then_warm(tmp_path):
    # tiny keeps the cold compile short; the warm process must hit the FX-graph cache
    run = st.measure_startup(st.StartupConfig(preset="tiny", bs=(1,), context=32, timeout_s=300))
    cold, warm = run["rows"]
    assert cold["compile_setup_s"].keys() == {1} and cold["capture_s"] > 0
    assert cold["fxgraph_cache_miss"] > 0 and warm["fxgraph_cache_hit"] > 0
    assert warm["compile_s"] < cold["compile_s"]
    assert cold["cudagraph_skips"] == 0
