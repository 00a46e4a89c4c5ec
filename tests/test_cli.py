"""The command line through click's test runner: one-line errors, exit codes, no tracebacks."""
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from microbench.cli import main
from microbench.report.record import write_run
from tests.report.runs import LAUNCH, launch_run, sweep_run

HAS_CUDA = torch.cuda.is_available()


def run(*args):
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output, r.exception


def run_split(*args):
    """(exit code, stdout, stderr) apart."""
    try:
        runner = CliRunner(mix_stderr=False)   # click 8.1
    except TypeError:
        runner = CliRunner()                   # click 8.2 on: stdout and stderr always apart
    r = runner.invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def assert_usage_error(args, option):
    code, out, exc = run(*args)
    assert code == 2, out
    lines = [l for l in out.splitlines() if l.strip()]
    assert len(lines) == 1, out
    assert option in lines[0] and "Traceback" not in out
    assert exc is None or isinstance(exc, SystemExit)


def test_version_and_help():
    code, out, _ = run("--version")
    assert code == 0 and "0.1.0" in out
    code, out, _ = run("--help")
    assert code == 0 and "sweep" in out and "ladder" in out
    code, out, _ = run("sweep", "--help")
    assert code == 0 and "4096" in out and "32768" in out  # limits are stated


def test_ladder_collapse_prints_two_sizes():
    code, out, _ = run("ladder", "--max-num-seqs", "1")
    assert code == 0 and "[1, 2]" in out.splitlines()


def test_ladder_padding_and_json():
    code, out, _ = run("ladder", "--max-num-seqs", "512", "--max-num-batched-tokens", "700",
                       "--max-capture-size", "1024", "--no-off-stride-fix", "--bs", "700,37",
                       "--json")
    data = json.loads(out)
    assert code == 0 and data["ladder"][-1] == 688
    assert data["pads"] == [dict(bs=700, padded=None, padding=0), dict(bs=37, padded=40, padding=3)]
    code, out, _ = run("ladder", "--engine", "pow2", "--max-bs", "64", "--bs", "37")
    assert "bs 37: pads to 64 (27 padded rows)" in out


@pytest.mark.parametrize("args, option", [
    (("ladder", "--max-num-seqs", "0"), "--max-num-seqs"),
    (("ladder", "--max-num-seqs", "abc"), "--max-num-seqs"),
    (("ladder", "--sizes", "1,,2"), "--sizes"),
    (("ladder", "--sizes", "1,x"), "--sizes"),
    (("sweep", "--bs", "0"), "--bs"),
    (("sweep", "--bs", "-4"), "--bs"),
    (("sweep", "--bs", "four"), "--bs"),
    (("sweep", "--bs", "1,,4"), "--bs"),
    (("sweep", "--bs", ""), "--bs"),
    (("sweep", "--bs", "5000"), "--bs"),
    (("sweep", "--preset", "gpt-5"), "--preset"),
    (("sweep", "--ladder", "1,2,x"), "--ladder"),
    (("sweep", "--ladder", "fast"), "--ladder"),
    (("sweep", "--ladder", "1,99999"), "--ladder"),
    (("sweep", "--context", "100000"), "--context"),
    (("sweep", "--context", "0"), "--context"),
    (("sweep", "--mode", "half"), "--mode"),
    (("sweep", "--dtype", "int3"), "--dtype"),
    (("sweep", "--steps", "0"), "--steps"),
    (("sweep", "--split-launch", "--mode", "piecewise"), "--split-launch"),
    (("sweep", "--split-launch", "--tp", "2"), "--split-launch"),
    (("sweep", "--full-max-size", "4"), "--full-max-size"),
    (("sweep", "--full-max-size", "4", "--mode", "piecewise"), "--full-max-size"),
    (("sweep", "--full-max-size", "0", "--mode", "full_and_piecewise"), "--full-max-size"),
    (("sweep", "--full-max-size", "x", "--mode", "full_and_piecewise"), "--full-max-size"),
    (("sweep", "--full-max-size", "4", "--mode", "full_and_piecewise", "--tp", "2"),
     "--full-max-size"),
    (("sweep", "--mode", "full_and_piecewise", "--tp", "2"), "--mode"),
    (("tune", "--rows", "3"), "--rows"),
    (("tune", "--rows", "0"), "--rows"),
    (("tune", "--rows", "32"), "--rows"),
    (("tune", "--ab", "nope"), "--ab"),
    (("tune", "--ab", "opt-125m", "--rows", "3"), "--rows"),
    (("tune", "--time-budget", "0"), "--time-budget"),
    (("tune", "--vary", "pdl"), "--vary"),
    (("tune", "--ab", "opt-125m", "--vary", "plan", "--table", "somewhere"), "--table"),
    (("tune", "--ab", "opt-125m", "--vary", "nope"), "--vary"),
    (("tune", "--vary", "blas"), "--vary"),
    (("tune", "--ab", "llama-8b", "--vary", "blas", "--rows", "16"), "--rows"),
    (("tune", "--ab", "llama-8b", "--vary", "blas", "--rows", "32,8"), "--rows"),
    (("tune", "--ab", "llama-8b", "--rows", "64"), "--rows"),
    (("tune", "--rows", "2000"), "--rows"),
    (("tune", "--workers", "0"), "--workers"),
    (("tune", "--preset", "gpt-5"), "--preset"),
])
def test_bad_options(args, option):
    assert_usage_error(args, option)


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
def test_tune_vary_blas_takes_any_batch_size_above_16():
    code, out, _ = run("tune", "--ab", "llama-8b", "--vary", "blas", "--rows", "17,24,48")
    assert code == 1 and "needs a CUDA GPU" in out and "--rows" not in out


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
@pytest.mark.parametrize("vary", ["plan", "attention"])
def test_tune_vary_plan_and_attention_take_any_batch_size(vary):
    """The plan and the attention's fusion apply at every batch size, the cuBLAS rows too."""
    code, out, _ = run("tune", "--ab", "llama-8b", "--vary", vary, "--rows", "3,64")
    assert code == 1 and "needs a CUDA GPU" in out and "--rows" not in out


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"configs": {}}),
                                     json.dumps([1, 2])])
def test_tune_vary_previous_table_needs_a_table_to_compare(tmp_path, monkeypatch, content):
    """--vary previous-table reads its second arm's table from MICROBENCH_AB_TABLE: unset, or a
    file that is not a gemv table with entries, is one line and exit 2, before any GPU work."""
    if content is None:
        monkeypatch.delenv("MICROBENCH_AB_TABLE", raising=False)
    else:
        f = tmp_path / "before.json"
        f.write_text(content)
        monkeypatch.setenv("MICROBENCH_AB_TABLE", str(f))
    assert_usage_error(("tune", "--ab", "opt-125m", "--vary", "previous-table"), "previous-table")


def test_previous_table_is_checked_against_the_gpu(tmp_path):
    from microbench.cli_tune import previous_table_problem
    f = tmp_path / "before.json"
    f.write_text(json.dumps({"device": "NVIDIA H200", "configs": {"N=1,K=2,norm=0,epi=0,elt=2": {}}}))
    assert previous_table_problem(str(f)) is None
    assert previous_table_problem(str(f), "NVIDIA H200") is None
    assert "not this GPU" in previous_table_problem(str(f), "NVIDIA H100 80GB HBM3")
    assert "MICROBENCH_AB_TABLE" in previous_table_problem("")


def test_unwritable_out(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    assert_usage_error(("sweep", "--out", str(f / "sub")), "--out")
    assert_usage_error(("launch", "--out", str(f / "sub")), "--out")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
@pytest.mark.parametrize("cmd", ["sweep", "launch", "kernels", "reproduce"])
def test_gpu_commands_say_they_need_a_gpu(cmd, tmp_path):
    code, out, _ = run(cmd, "--out", str(tmp_path))
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "ladder" in lines[0]


def test_show_saved_run(tmp_path):
    d = write_run(tmp_path / "r", sweep_run())
    code, out, _ = run("show", str(d))
    assert code == 0 and "Test GPU" in out and "3.00" in out and "tiny" in out
    code, out, _ = run("show", str(d / "run.json"), "--json")
    assert json.loads(out)["rows"][0]["speedup"] == 3.0


def test_show_missing_or_bad_run(tmp_path):
    assert_usage_error(("show", str(tmp_path / "nope")), "RUN")
    (tmp_path / "run.json").write_text("{not json")
    assert_usage_error(("show", str(tmp_path)), "RUN")


@pytest.mark.parametrize("args, option", [
    (("model", "--gpu", "B200"), "--gpu"),
    (("model", "--copy-bw", "0", "--tflops", "100"), "--copy-bw"),
    (("model", "--bs", "0", "--gpu", "H100"), "--bs"),
    (("sweep", "--bs", "1,0"), "below the minimum 1"),
    (("model", "--context", "99999", "--gpu", "H100"), "--context"),
    (("model",), "--profile"),
    (("kernels", "--bs", "x"), "--bs"),
    (("sweep", "--bs", "4,4"), "--bs"),
])
def test_more_bad_options(args, option):
    assert_usage_error(args, option)


def test_model_profile_must_hold_launch_measurements(tmp_path):
    d = write_run(tmp_path / "r", sweep_run())   # a valid sweep interrupted before its launch
    code, out, _ = run("model", "--profile", str(d))
    assert code == 2 and "holds no launch measurements" in out and "Traceback" not in out
    # one line: the note on what was taken from the run comes only once it holds a profile
    assert len([l for l in out.splitlines() if l.strip()]) == 1


@pytest.mark.parametrize("run_dict", [dict(config={}), dict(kind="launch", config={})])
def test_show_incomplete_run_is_one_line(tmp_path, run_dict):
    d = write_run(tmp_path / "r", run_dict)
    assert_usage_error(("show", str(d)), "RUN")


def test_out_of_memory_is_one_line(monkeypatch, tmp_path):
    import microbench.bench.sweep as sw

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
    monkeypatch.setattr("microbench.cli.require_cuda", lambda name: None)
    monkeypatch.setattr(sw, "run_sweep", boom)
    code, out, _ = run("sweep", "--out", str(tmp_path))
    assert code == 1 and len(out.strip().splitlines()) == 1 and "ran out of memory" in out


def test_failed_validation_leaves_no_folder(tmp_path):
    target = tmp_path / "new" / "results"
    run("sweep", "--bs", "0", "--out", str(target))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args, option", [
    (("sweep", "--arms", "eager,foo"), "--arms"),
    (("sweep", "--arms", "compile,compile"), "--arms"),
    (("sweep", "--mode", "none", "--arms", "torch-graph"), "--arms"),
    (("sweep", "--tp", "3", "--preset", "llama-8b"), "--tp"),
    (("sweep", "--tp", "2", "--arms", "compile"), "--arms"),
    (("sweep", "--tp", "0"), "--tp"),
    (("sweep", "--no-tp1"), "--no-tp1"),
    (("sweep", "--arms", ""), "--arms"),
    (("sweep", "--mode", "none", "--arms", "eager,graph"), "--arms"),
], ids=["unknown-arm", "repeated-arm", "torch-graph-without-graphs", "tp-heads", "tp-arms", "tp-zero",
        "no-tp1-alone", "no-arms", "graph-without-graphs"])
def test_arm_and_tp_usage_errors(args, option):
    assert_usage_error(args, option)


def test_tp_entry_point_without_a_gpu_says_so_in_one_line():
    import subprocess
    import sys
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU message")
    p = subprocess.run([sys.executable, "-m", "microbench.cli_tp", "sweep", "--tp", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "GPU" in lines[0] and "Traceback" not in p.stderr


# ---- runs that cannot be read: one line, exit code 2, for every command that reads a run ----
def _corrupt(edit):
    def make(tmp_path):
        run = sweep_run()
        run["launch"] = dict(LAUNCH)
        edit(run)
        (tmp_path / "run.json").write_text(json.dumps(run))
        return tmp_path
    return make


def _text(text):
    def make(tmp_path):
        (tmp_path / "run.json").write_text(text)
        return tmp_path
    return make


CORRUPT = {
    "not-json": _text("{not json"),
    "truncated": _text(json.dumps(sweep_run())[:200]),
    "empty-file": _text(""),
    "empty-object": _text("{}"),
    "a-list": _text("[1, 2]"),
    "binary": lambda d: [(d / "run.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff"), d][1],
    "rows-deleted": _corrupt(lambda r: r.pop("rows")),
    "rows-empty": _corrupt(lambda r: r.update(rows=[])),
    "string-for-number": _corrupt(lambda r: r["rows"][0].update(eager_step_us="fast")),
    "null-for-number": _corrupt(lambda r: r["rows"][0].update(eager_step_us=None)),
    "wrong-kind": _corrupt(lambda r: r.update(kind="benchmark")),
    "no-kind": _corrupt(lambda r: r.pop("kind")),
    "missing-env": _corrupt(lambda r: r.pop("env")),
    "missing-config": _corrupt(lambda r: r.pop("config")),
    "config-a-list": _corrupt(lambda r: r.update(config=[1])),
    "launch-a-string": _corrupt(lambda r: r.update(launch="none")),
    "launch-without-copy": _corrupt(lambda r: r["launch"].pop("copy")),
    "future-schema": _corrupt(lambda r: r.update(schema_version=99)),
    "folder-without-run-json": lambda d: d,
    "no-such-path": lambda d: d / "nope",
    "run-json-is-a-folder": lambda d: (d / "run.json").mkdir() or d / "run.json",
}


@pytest.mark.parametrize("cmd", ["show", "model --profile"])
@pytest.mark.parametrize("name", list(CORRUPT))
def test_a_bad_run_is_one_line_and_exit_2(tmp_path, cmd, name):
    path = CORRUPT[name](tmp_path)
    code, out, exc = run(*cmd.split(), str(path))
    lines = [l for l in out.splitlines() if l.strip()]
    assert code == 2, out
    assert len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith("microbench: error: ") and str(tmp_path) in lines[0]
    assert exc is None or isinstance(exc, SystemExit)


def test_show_says_what_is_wrong(tmp_path):
    code, out, _ = run("show", str(CORRUPT["string-for-number"](tmp_path)))
    assert "'rows[0].eager_step_us' is a string ('fast'), where a number belongs" in out
    code, out, _ = run("show", str(CORRUPT["rows-empty"](tmp_path)))
    assert "'rows' is empty; a sweep run needs at least one row" in out


def test_show_a_run_incomplete_below_the_schema(tmp_path):
    run_dict = launch_run()
    del run_dict["launch"]["replay_fit"]["gpu_fixed_us"]
    code, out, _ = run("show", str(write_run(tmp_path / "r", run_dict)))
    assert code == 2 and len(out.strip().splitlines()) == 1 and "incomplete" in out


# ---- model: the run's preset, context and dtype unless options override them -------------
def _profile_run(tmp_path):
    run_dict = sweep_run()
    run_dict["config"].update(preset="llama-1b", context=1024, dtype="float16")
    run_dict["launch"] = dict(LAUNCH)
    return write_run(tmp_path / "r", run_dict)


def test_model_takes_the_runs_preset_context_and_dtype(tmp_path):
    code, out, err = run_split("model", "--profile", str(_profile_run(tmp_path)), "--json")
    res = json.loads(out)
    assert code == 0 and res["preset"] == "llama-1b" and res["context"] == 1024
    assert err.strip().splitlines() == [
        "microbench: from the --profile run: preset llama-1b, context 1024, dtype float16 "
        "(options override)"]


def test_model_options_override_the_run(tmp_path):
    code, out, err = run_split("model", "--profile", str(_profile_run(tmp_path)), "--json",
                               "--preset", "tiny", "--dtype", "bfloat16")
    assert code == 0 and json.loads(out)["preset"] == "tiny" and json.loads(out)["context"] == 1024
    assert "context 1024" in err and "preset" not in err and "dtype" not in err


def test_model_with_a_launch_run_uses_the_defaults(tmp_path):
    code, out, err = run_split("model", "--profile", str(write_run(tmp_path / "r", launch_run())),
                               "--json")
    assert code == 0 and json.loads(out)["preset"] == "opt-125m" and err == ""


def test_bare_model_says_what_it_needs():
    code, out, _ = run("model")
    assert code == 2 and len(out.strip().splitlines()) == 1 and "--profile" in out
    code, out, _ = run("model", "--help")
    assert code == 0 and "Needs a device profile" in out and "--gpu NAME" in out


# ---- index, defaults ---------------------------------------------------------------------
def test_index_writes_the_results_readme(tmp_path):
    d = write_run(tmp_path / "h200" / "20260101-000000-sweep-tiny-test-gpu", sweep_run())
    code, out, _ = run("index", str(tmp_path))
    assert code == 0 and (tmp_path / "README.md").is_file() and "README.md" in out
    assert d.name in (tmp_path / "README.md").read_text()


def test_index_of_a_missing_folder_is_one_line(tmp_path):
    assert_usage_error(("index", str(tmp_path / "nope")), "ROOT")


def test_index_defaults_to_results():
    code, out, _ = run("index", "--help")
    assert code == 0 and "default: results" in out


@pytest.mark.parametrize("cmd", ["sweep", "launch", "kernels", "reproduce"])
def test_runs_go_to_runs_by_default(cmd):
    code, out, _ = run(cmd, "--help")
    assert code == 0 and "[default: runs]" in out


def test_modes_match_the_runner():
    from microbench.cli import MODES
    from microbench.engine.runner import MODES as RUNNER_MODES
    assert MODES == RUNNER_MODES


# ---- what the CPU-only commands import ---------------------------------------------------
def _imports_torch(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", "import sys\n" + code + "\nprint('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr


def _after(args: list) -> str:
    return (f"from microbench.cli import main\ntry:\n    main({args!r})\n"
            "except SystemExit:\n    pass")


def test_importing_the_cli_and_help_do_not_import_torch():
    assert _imports_torch("from microbench.cli import main") == "False"
    assert _imports_torch(_after(["--help"])) == "False"


@pytest.mark.parametrize("args", [["ladder", "--bs", "37"], ["show", "{run}"], ["index", "{root}"],
                                  ["sweep", "--help"], ["show", "{root}/nope"],
                                  ["model", "--gpu", "H200"], ["model", "--profile", "{run}"]])
def test_cpu_commands_do_not_import_torch(tmp_path, args):
    run_dict = sweep_run()
    run_dict["launch"] = dict(LAUNCH)
    d = write_run(tmp_path / "dev" / "r", run_dict)
    args = [a.format(run=d, root=tmp_path) for a in args]
    assert _imports_torch(_after(args)) == "False"


# ---- --format, compare, progress and --trace ------------------------------------------------
def _sweep_dir(tmp_path, name="a", **edit):
    run_dict = sweep_run()
    for r in run_dict["rows"]:
        r.update(graph_p20=r["graph_step_us"] * 0.99, graph_p80=r["graph_step_us"] * 1.01)
    for k, v in edit.items():
        run_dict[k].update(v)
    return write_run(tmp_path / name, run_dict)


@pytest.mark.parametrize("fmt, first", [("table", "GPU Test GPU"), ("markdown", "**GPU Test GPU"),
                                        ("csv", "bs,pad,ran as"), ("json", "[")])
def test_show_in_each_format(tmp_path, fmt, first):
    code, out, _ = run("show", str(_sweep_dir(tmp_path)), "--format", fmt)
    assert code == 0 and out.startswith(first)
    if fmt == "json":
        assert json.loads(out)[0]["bs"] == 1


def test_show_a_format_a_kind_cannot_write_is_one_line(tmp_path):
    from tests.report.runs import reproduce_run
    d = write_run(tmp_path / "r", reproduce_run())
    assert_usage_error(("show", str(d), "--format", "csv"), "no table to write as csv")


def test_compare_two_runs(tmp_path):
    a = _sweep_dir(tmp_path, "a")
    b = _sweep_dir(tmp_path, "b", env=dict(git="def"))
    code, out, _ = run("compare", str(a), str(b))
    assert code == 0 and "B against A: 0 faster, 0 slower, 6 same, 0 unclear" in out
    code, out, _ = run("compare", str(a), str(b), "--format", "json")
    assert code == 0 and {r["verdict"] for r in json.loads(out)} == {"same"}
    code, out, _ = run("compare", str(a), str(b), "--format", "csv")
    assert out.splitlines()[0] == "bs,figure,A,B,B/A,noise,verdict"


@pytest.mark.parametrize("edit, why", [
    (dict(env=dict(gpu="Other GPU")), "device"), (dict(config=dict(preset="llama-1b")), "preset"),
    (dict(config=dict(context=4096)), "context"),
])
def test_compare_refuses_runs_that_are_not_comparable(tmp_path, edit, why):
    a, b = _sweep_dir(tmp_path, "a"), _sweep_dir(tmp_path, "b", **edit)
    assert_usage_error(("compare", str(a), str(b)), f"not comparable: {why}")


@pytest.mark.parametrize("name", ["not-json", "rows-deleted", "no-such-path", "empty-object"])
def test_compare_an_unreadable_run_is_one_line(tmp_path, name):
    a = _sweep_dir(tmp_path / "x", "a")
    bad = CORRUPT[name](tmp_path)
    assert_usage_error(("compare", str(a), str(bad)), "RUN_B")


def test_compare_needs_two_runs(tmp_path):
    assert_usage_error(("compare", str(_sweep_dir(tmp_path))), "RUN_B")
    assert_usage_error(("compare",), "RUN_B")


@pytest.mark.parametrize("args, option", [
    (("sweep", "--format", "xml"), "--format"),
    (("sweep", "--trace", "{file}/sub"), "--trace"),
    (("sweep", "--trace", "{dir}", "--repeat", "2"), "--trace"),
    (("sweep", "--format", "csv", "--tp", "2"), "--format"),
    (("compare", "a", "b", "--threshold", "-1"), "--threshold"),
])
def test_format_and_trace_usage_errors(tmp_path, args, option):
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file", dir=tmp_path / "traces") for a in args]
    assert_usage_error(args, option)


def _fake_sweep(monkeypatch, tmp_path):
    """The sweep command with run_sweep replaced: it drives every progress hook the CLI
    passes, and the trace writer with a stand-in profiler; returns the keywords it got."""
    import microbench.bench.sweep as sw
    got = {}

    class Prof:
        def export_chrome_trace(self, path):
            with open(path, "w") as f:
                f.write('{"traceEvents": []}')

    def fake(cfg, on_run=None, predict=None, **kw):
        got.update(kw)
        if kw.get("on_capture"):
            for d, s in enumerate([None, 4, 1]):
                kw["on_capture"](d, 2, s, d * 0.5, d << 20)
            kw["on_rows"](0, 1, 1)
            kw["on_round"](1, 0.1, 2.0)
            kw["on_phase"]("bs 1: torch.compile (compile, warm up, record)", None)
            kw["on_phase"]("bs 1: torch.compile (compile, warm up, record)", 3.0)
            kw["on_rows"](1, 1, None)
        run_dict = sweep_run()
        on_run(run_dict)
        if kw.get("on_trace"):
            kw["on_trace"](Prof())
        return run_dict
    monkeypatch.setattr("microbench.cli.require_cuda", lambda name: None)
    monkeypatch.setattr(sw, "run_sweep", fake)
    return got


def test_sweep_reports_progress_as_plain_lines_in_a_log(monkeypatch, tmp_path):
    got = _fake_sweep(monkeypatch, tmp_path)
    code, out, err = run_split("sweep", "--out", str(tmp_path / "runs"), "--trace",
                               str(tmp_path / "traces"))
    assert code == 0 and {"on_capture", "on_rows", "on_phase", "on_round", "on_trace"} <= set(got)
    assert "\r" not in err and "\x1b" not in err
    assert "captured 2 sizes in 1.0 s, pool 2 MiB" in err.splitlines()
    assert "bs 1: torch.compile (compile, warm up, record): 3.0 s" in err.splitlines()
    assert out.startswith("GPU Test GPU") and "trace: " in out
    traces = list((tmp_path / "traces").glob("*.trace.json"))
    assert len(traces) == 1 and json.loads(traces[0].read_text()) == {"traceEvents": []}


def test_sweep_quiet_and_csv(monkeypatch, tmp_path):
    got = _fake_sweep(monkeypatch, tmp_path)
    code, out, err = run_split("sweep", "--out", str(tmp_path), "--quiet", "--format", "csv")
    assert code == 0 and err == "" and "on_capture" not in got
    assert out.splitlines()[0].startswith("bs,pad,ran as")


def test_help_does_not_import_rich_and_is_quick():
    assert _imports_torch(_after(["--help"]).replace("'torch'", "'rich'")) == "False"
    import time
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _after(["--help"])], capture_output=True, timeout=60)
    assert p.returncode == 0 and time.perf_counter() - t0 < 2.0   # well under on an idle machine


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
def test_a_bad_quiet_tolerance_is_a_usage_error(monkeypatch, command):
    monkeypatch.setenv("MICROBENCH_HOST_QUIET", "tight")
    assert_usage_error((command,), "MICROBENCH_HOST_QUIET")
