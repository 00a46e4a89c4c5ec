"""The command line through click's test runner: one-line errors, exit codes, no tracebacks."""
import json

import pytest
import torch
from click.testing import CliRunner

from microbench.cli import main
from microbench.report.record import write_run

HAS_CUDA = torch.cuda.is_available()


def run(*args):
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output, r.exception


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
])
def test_bad_options(args, option):
    assert_usage_error(args, option)


def test_unwritable_out(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    assert_usage_error(("sweep", "--out", str(f / "sub")), "--out")
    assert_usage_error(("launch", "--out", str(f / "sub")), "--out")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
@pytest.mark.parametrize("cmd", ["sweep", "launch"])
def test_gpu_commands_say_they_need_a_gpu(cmd, tmp_path):
    code, out, _ = run(cmd, "--out", str(tmp_path))
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "ladder" in lines[0]


def test_show_saved_run(tmp_path):
    run_dict = dict(kind="sweep", config=dict(preset="tiny", dtype="bfloat16", mode="full",
                                              ladder="vllm", context=64, bs=[1, 4]),
                    env=dict(gpu="Test GPU", torch="x", triton="y"), ladder=[1, 2, 4, 8],
                    rows=[dict(bs=1, padded_bs=1, ran_as="full", eager_step_us=900.0,
                               graph_step_us=300.0, speedup=3.0, eager_tok_s=1111.1,
                               graph_tok_s=3333.3, graph_tok_s_per_seq=3333.3)])
    d = write_run(tmp_path / "r", run_dict)
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
    (("model", "--context", "99999", "--gpu", "H100"), "--context"),
    (("model",), "--profile"),
    (("kernels", "--bs", "x"), "--bs"),
    (("sweep", "--bs", "4,4"), "--bs"),
])
def test_more_bad_options(args, option):
    assert_usage_error(args, option)


def test_model_profile_must_hold_launch_measurements(tmp_path):
    d = write_run(tmp_path / "r", dict(kind="sweep", config={}, env={}, rows=[]))
    assert_usage_error(("model", "--profile", str(d)), "--profile")


@pytest.mark.parametrize("run_dict", [dict(config={}), dict(kind="launch", config={})])
def test_show_incomplete_run_is_one_line(tmp_path, run_dict):
    d = write_run(tmp_path / "r", run_dict)
    assert_usage_error(("show", str(d)), "RUN")


def test_out_of_memory_is_one_line(monkeypatch, tmp_path):
    import microbench.bench.sweep as sw

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
    monkeypatch.setattr(sw, "require_cuda", lambda name: None)
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
    p = subprocess.run([sys.executable, "-m", "microbench.report.tp_tables", "sweep", "--tp", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "GPU" in lines[0] and "Traceback" not in p.stderr
