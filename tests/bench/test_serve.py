"""The serving trace: the trace generator and file parser, the aggregation arithmetic on
synthetic step times, the loop end to end on the CPU (tiny preset, a fake runner: graphs need
CUDA), bad input through the CLI, and the command on CUDA (`gpu`-marked)."""
import statistics

import pytest
import torch
from click.testing import CliRunner

from microbench.bench.serve import (ServeConfig, aggregate, by_batch_size, median_by_bs,
                                    routes, run_serve)
from microbench.bench.trace import (MAX_RATE, parse_output_len, poisson, poisson_trace,
                                    read_trace, trace_summary)
from microbench.cli import main
from microbench.engine.shapes import MAX_BATCH
from microbench.report.record import load_run
from microbench.report.render import render_run
from microbench.report.schema import validate_run
from tests.bench.fake_runner import FakeRunner

HAS_CUDA = torch.cuda.is_available()


# ---- the trace generator -----------------------------------------------------------------
def test_poisson_trace_is_seeded_and_capped():
    a = poisson_trace(300, 2.0, (20, 40), max_num_seqs=16, seed=3)
    assert a == poisson_trace(300, 2.0, (20, 40), max_num_seqs=16, seed=3)
    assert a != poisson_trace(300, 2.0, (20, 40), max_num_seqs=16, seed=4)
    assert len(a) == 300 and all(1 <= b <= 16 for b in a)
    # 2 requests a step of ~30 tokens each want ~60 running: the cap holds it at 16
    assert a[-100:] == [16] * 100


def test_poisson_trace_unconstrained_follows_littles_law():
    """Running requests = arrival rate x tokens each, when the cap never binds."""
    trace = poisson_trace(4000, 0.5, (20, 20), max_num_seqs=4096, seed=0)
    assert statistics.mean(trace[200:]) == pytest.approx(0.5 * 20, rel=0.1)


def test_poisson_trace_one_token_requests_leave_after_one_step():
    """With output length 1 every step runs exactly the requests queued so far (capped), and
    idle ticks (nothing arrived) leave no step."""
    trace = poisson_trace(500, 0.3, (1, 1), max_num_seqs=2, seed=1)
    assert set(trace) <= {1, 2} and 1 in trace


def test_poisson_sampler_mean():
    import random
    rng = random.Random(0)
    for rate in (0.2, 3.0, MAX_RATE):
        draws = [poisson(rng, rate) for _ in range(4000)]
        assert statistics.mean(draws) == pytest.approx(rate, rel=0.05)


def test_poisson_given_one_arrival_and_sparse_traces():
    """Idle ticks are skipped, not simulated: a rate of one request in a million ticks still
    gives a trace at once, each request running alone for its output length."""
    import math
    import random
    rng = random.Random(0)
    draws = [poisson(rng, 0.5, at_least_one=True) for _ in range(4000)]
    assert min(draws) == 1
    assert statistics.mean(draws) == pytest.approx(0.5 / (1 - math.exp(-0.5)), rel=0.05)
    assert poisson_trace(50, 1e-6, (5, 5), max_num_seqs=8, seed=0) == [1] * 50


@pytest.mark.parametrize("args, option", [
    ((0, 1.0, (1, 2), 4), "--steps"),
    ((5, 0.0, (1, 2), 4), "--arrival-rate"),
    ((5, MAX_RATE * 2, (1, 2), 4), "--arrival-rate"),
    ((5, 1.0, (1, 2), 0), "--max-num-seqs"),
    ((5, 1.0, (3, 2), 4), "--output-len"),
])
def test_poisson_trace_rejects_bad_arguments(args, option):
    with pytest.raises(ValueError, match=option):
        poisson_trace(*args)


@pytest.mark.parametrize("text, want", [("64", (64, 64)), ("16-128", (16, 128)), ("5-5", (5, 5))])
def test_parse_output_len(text, want):
    assert parse_output_len(text) == want


@pytest.mark.parametrize("text", ["0", "10-5", "a", "1-2-3", "", "-4", "3-"])
def test_parse_output_len_rejects(text):
    with pytest.raises(ValueError, match="--output-len"):
        parse_output_len(text)


# ---- the file parser -----------------------------------------------------------------------
def test_read_trace_skips_blanks_and_comments(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# batch sizes\n1\n\n  4  \n7 # a burst\n")
    assert read_trace(f) == [1, 4, 7]
    assert trace_summary([1, 4, 7, 4]) == dict(steps=4, tokens=16, min_bs=1, max_bs=7,
                                               median_bs=4.0, distinct=3)


@pytest.mark.parametrize("text, what", [
    ("1\n2\nabc\n", "line 3: 'abc' is not a batch size"),
    ("1\n0\n", "line 2: batch size 0 is out of range"),
    ("1\n-3\n", "line 2: batch size -3 is out of range"),
    (f"{MAX_BATCH + 1}\n", f"line 1: batch size {MAX_BATCH + 1} is out of range"),
    ("1.5\n", "line 1: '1.5' is not a batch size"),
    ("1,2\n", "line 1: '1,2' is not a batch size"),
    ("# nothing\n\n", "holds no batch sizes"),
])
def test_read_trace_rejects(tmp_path, text, what):
    f = tmp_path / "t.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match="--batch-sizes: ") as e:
        read_trace(f)
    assert what in str(e.value) and len(str(e.value).splitlines()) == 1


def test_read_trace_unreadable(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        read_trace(tmp_path / "missing.txt")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="cannot be read"):
        read_trace(tmp_path / "bin")


# ---- the aggregation, on synthetic step times ----------------------------------------------
TRACE = [1, 3, 3, 5, 8]                      # 20 tokens
LADDER = [1, 2, 4]                           # 3 pads to 4; 5 and 8 fall back
EXACT = [1, 3, 5, 8]


def graph_us(bs):                            # a graph step: 100 us + 10 per row computed
    return 100 + 10 * bs


def eager_us(bs):
    return 500 + 10 * bs


def synthetic(scale=1.0):
    """Step times (ns) of one repeat per arm: graph pays its padded size, or eager's time."""
    pad = routes(TRACE, LADDER)
    ns = lambda us: int(us * 1000 * scale)
    return dict(eager=[ns(eager_us(b)) for b in TRACE],
                graph=[ns(graph_us(pad[b]) if pad[b] else eager_us(b)) for b in TRACE],
                exact=[ns(graph_us(b)) for b in TRACE])


def test_aggregate_padding_and_fallbacks():
    reps = [synthetic(1.0), synthetic(1.0)]
    samples = {a: [r[a] for r in reps] for a in ("eager", "graph", "exact")}
    rows = {r["arm"]: r for r in aggregate(TRACE, samples, dict(graph=LADDER, exact=EXACT))}
    g, x, e = rows["graph"], rows["exact"], rows["eager"]
    graph_total = (110 + 140 + 140 + 550 + 580) * 1e-6
    exact_total = (110 + 130 + 130 + 150 + 180) * 1e-6
    eager_total = (510 + 530 + 530 + 550 + 580) * 1e-6
    assert g["time_s"] == pytest.approx(graph_total) and x["time_s"] == pytest.approx(exact_total)
    assert g["tok_s"] == pytest.approx(20 / graph_total)
    assert (g["graphed_steps"], g["fallback_steps"], g["padded_rows"]) == (3, 2, 2)
    assert g["padding_waste_rows"] == pytest.approx(2 / 22)
    # two steps of bs 3 ran as 4: 10 us each over exact
    assert g["padding_time_s"] == pytest.approx(20e-6)
    assert g["padding_waste_time"] == pytest.approx(20e-6 / graph_total)
    # bs 5 and 8 ran eagerly: (550 - 150) + (580 - 180) us over exact
    assert g["fallback_time_s"] == pytest.approx(800e-6)
    assert g["time_vs_exact"] == pytest.approx(graph_total / exact_total)
    assert g["speedup_vs_eager"] == pytest.approx(eager_total / graph_total)
    assert (x["padded_rows"], x["fallback_steps"], x["padding_time_s"]) == (0, 0, 0.0)
    assert x["time_vs_exact"] == 1.0 and x["graphed_steps"] == 5
    assert e["graphed_steps"] == 0 and e["fallback_steps"] is None and e["padded_rows"] == 0
    assert e["fallback_time_s"] is None and e["speedup_vs_eager"] == 1.0
    assert g["step_us"] == statistics.median([110, 140, 140, 550, 580])


def test_aggregate_medians_and_paired_ratios_over_repeats():
    """Per-batch medians pool every repeat; trace time is the median repeat; ratios pair."""
    reps = [synthetic(1.0), synthetic(1.2), synthetic(0.9)]
    samples = {a: [r[a] for r in reps] for a in ("graph", "exact")}
    assert median_by_bs(TRACE, samples["exact"])[3] == pytest.approx(130_000)
    rows = {r["arm"]: r for r in aggregate(TRACE, samples, dict(graph=LADDER, exact=EXACT))}
    assert rows["graph"]["time_vs_exact"] == pytest.approx(1520 / 700)   # every pair alike
    assert rows["graph"]["speedup_vs_eager"] is None                     # no eager arm
    assert rows["graph"]["time_s"] == pytest.approx(1520e-6)             # the middle repeat


def test_aggregate_without_exact_leaves_time_waste_unknown():
    s = synthetic()
    rows = aggregate(TRACE, dict(eager=[s["eager"]], graph=[s["graph"]]), dict(graph=LADDER))
    g = rows[1]
    assert g["padded_rows"] == 2 and g["padding_time_s"] is None and g["fallback_time_s"] is None
    assert g["time_vs_exact"] is None


def test_by_batch_size():
    s = synthetic()
    rows = by_batch_size(TRACE, {a: [v] for a, v in s.items()}, dict(graph=LADDER, exact=EXACT))
    r3 = next(r for r in rows if r["bs"] == 3)
    assert r3 == dict(bs=3, steps=2, graph_padded_bs=4, exact_padded_bs=3, eager_step_us=530.0,
                      graph_step_us=140.0, exact_step_us=130.0)
    assert next(r for r in rows if r["bs"] == 8)["graph_padded_bs"] is None


# ---- the config ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, option", [
    (dict(steps=0), "--steps"), (dict(repeats=0), "--repeats"), (dict(warmup=-1), "--warmup"),
    (dict(context=0), "--context"), (dict(arrival_rate=0.0), "--arrival-rate"),
    (dict(output_len="0"), "--output-len"), (dict(max_num_seqs=0), "--max-num-seqs"),
    (dict(mode="half"), "--mode"), (dict(preset="gpt-5"), "--preset"),
    (dict(ladder="1,x"), "--ladder"), (dict(dtype="int3"), "--dtype"),
])
def test_config_rejects(kw, option):
    with pytest.raises(ValueError, match=option):
        ServeConfig(**kw).validate()


def test_config_trace_file_and_ladder(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("3\n9\n2\n")
    cfg = ServeConfig(trace_file=str(f), ladder="pow2").validate()
    assert cfg.trace() == [3, 9, 2] and cfg.ladder_sizes([3, 9, 2]) == [1, 2, 4, 8, 9]
    with pytest.raises(ValueError, match="above --max-num-seqs 8"):
        ServeConfig(trace_file=str(f), max_num_seqs=8).trace()
    assert ServeConfig(mode="none").ladder_sizes([3]) == []
    assert len(ServeConfig(steps=40).trace()) == 40


# ---- the loop end to end on the CPU --------------------------------------------------------
def cpu_config(**kw):
    base = dict(preset="tiny", context=8, ladder="1,2,4", dtype="float32", backend="torch",
                repeats=1, warmup=1, out="unused")
    return ServeConfig(**{**base, **kw})


def test_serve_loop_on_cpu_with_a_fake_runner(tmp_path):
    from microbench.cli_serve import write_serve_run
    trace = [1, 3, 6, 3]                       # 3 pads to 4, 6 falls back
    run = run_serve(cpu_config(), trace, device="cpu", make_runner=FakeRunner)
    rows = {r["arm"]: r for r in run["rows"]}
    assert list(rows) == ["eager", "graph", "exact"] and run["exact_ladder"] == [1, 3, 6]
    g = rows["graph"]
    assert (g["graphed_steps"], g["fallback_steps"], g["padded_rows"], g["tokens"]) == (3, 1, 2, 13)
    assert all(r["time_s"] > 0 and r["tok_s"] > 0 for r in rows.values())
    # warm-up and timed pass: the runner counted what the aggregation derived
    c = run["runner_counts"]["graph"]
    assert (c["replays"], c["fallbacks"], c["padded_rows"]) == (6, 2, 4)
    assert run["runner_counts"]["exact"]["padded_rows"] == 0
    assert run["trace"]["batch_sizes"] == trace and run["wall_s"] > 0
    d = write_serve_run(tmp_path / "r", run)
    assert validate_run(load_run(d), d).kind == "serve"
    assert (d / "serve.csv").read_text().startswith("arm,captured_sizes")
    assert (d / "by_bs.csv").is_file()
    text = render_run(load_run(d))
    assert "graph" in text and "exact" in text and "trace" in text
    from microbench.report.index import headline
    assert headline(run).startswith("graph ") and "1 step fell back" in headline(run)


def test_serve_record_validation():
    """A serve run must hold its trace and rows with an arm each (report.serve_schema)."""
    from microbench.report.schema import RunFileError
    run = run_serve(cpu_config(mode="none"), [1], device="cpu")
    validate_run(run, "r")
    for broken, what in ((dict(run, trace=None), "'trace'"),
                         (dict(run, rows=[{"arm": "eager"}]), r"'rows\[0\]' has no 'steps'"),
                         (dict(run, config={"preset": "tiny"}), "'config' has no 'mode'")):
        with pytest.raises(RunFileError, match=what):
            validate_run({k: v for k, v in broken.items() if v is not None}, "r")


def test_serve_loop_eager_only_on_cpu():
    run = run_serve(cpu_config(mode="none"), [2, 1], device="cpu", make_runner=FakeRunner)
    assert [r["arm"] for r in run["rows"]] == ["eager"] and run["ladder"] == []
    assert run["rows"][0]["time_vs_exact"] is None


# ---- the command ---------------------------------------------------------------------------
def cli(*args):
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


@pytest.mark.parametrize("content, what", [
    ("4\nfour\n", "line 2"), ("4\n0\n", "batch size 0"), ("", "holds no batch sizes"),
])
def test_cli_bad_trace_file(tmp_path, content, what):
    f = tmp_path / "trace.txt"
    f.write_text(content)
    code, out = cli("serve", "--batch-sizes", str(f), "--out", str(tmp_path / "o"))
    lines = [l for l in out.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "--batch-sizes" in lines[0] and what in lines[0], out


@pytest.mark.parametrize("args, option", [
    (("--batch-sizes", "/nonexistent/trace.txt"), "--batch-sizes"),
    (("--steps", "0"), "--steps"), (("--repeats", "0"), "--repeats"),
    (("--arrival-rate", "0"), "--arrival-rate"), (("--output-len", "0"), "--output-len"),
    (("--output-len", "9-3"), "--output-len"), (("--mode", "half"), "--mode"),
    (("--context", "0"), "--context"), (("--max-num-seqs", "0"), "--max-num-seqs"),
    (("--ladder", "1,x"), "--ladder"), (("--steps", "many"), "--steps"),
])
def test_cli_bad_options(tmp_path, args, option):
    code, out = cli("serve", *args, "--out", str(tmp_path / "o"))
    lines = [l for l in out.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and option in lines[0] and "Traceback" not in out, out


def test_cli_glue_on_cpu(tmp_path, monkeypatch):
    """The command's path past the GPU check (run on the CPU with a fake runner): the run
    folder with its CSVs and the table."""
    import microbench.bench.serve as serve
    real = serve.run_serve
    monkeypatch.setattr("microbench.cli_serve.require_cuda", lambda cmd: None)
    monkeypatch.setattr(serve, "run_serve", lambda cfg, trace, **kw: real(
        cfg, trace, device="cpu", make_runner=FakeRunner, **kw))
    f = tmp_path / "t.txt"
    f.write_text("1\n3\n6\n")
    code, out = cli("serve", "--batch-sizes", str(f), "--preset", "tiny", "--dtype", "float32",
                    "--backend", "torch", "--context", "8", "--ladder", "1,2,4", "--repeats", "1",
                    "--warmup", "0", "--out", str(tmp_path / "o"))
    assert code == 0 and "exact" in out and "saved: " in out, out
    (d,) = list((tmp_path / "o").iterdir())
    assert {p.name for p in d.iterdir()} == {"run.json", "serve.csv", "by_bs.csv"}
    assert load_run(d)["rows"][1]["fallback_steps"] == 1


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
def test_cli_needs_a_gpu(tmp_path):
    code, out = cli("serve", "--steps", "4", "--out", str(tmp_path))
    assert code == 1 and "needs a CUDA GPU" in out


@pytest.mark.gpu
def test_serve_command_on_cuda(tmp_path):
    """A short Poisson trace past a ladder of [1, 2, 4]: padding, fallbacks, exact and eager."""
    code, out = cli("serve", "--preset", "tiny", "--steps", "24", "--arrival-rate", "2",
                    "--output-len", "4-8", "--max-num-seqs", "8", "--ladder", "1,2,4",
                    "--context", "32", "--repeats", "2", "--warmup", "1", "--out",
                    str(tmp_path), "--quiet")
    assert code == 0, out
    (d,) = list(tmp_path.iterdir())
    run = load_run(d)
    rows = {r["arm"]: r for r in run["rows"]}
    assert set(rows) == {"eager", "graph", "exact"}
    assert rows["graph"]["fallback_steps"] == sum(b > 4 for b in run["trace"]["batch_sizes"])
    assert rows["exact"]["padded_rows"] == 0 and rows["exact"]["fallback_steps"] == 0
    assert run["runner_counts"]["exact"]["fallbacks"] == 0
    assert all(r["tok_s"] > 0 for r in rows.values())
    assert run["capture"]["graph"]["pool_bytes"] > 0
    code, shown = cli("show", str(d))
    assert code == 0 and "exact" in shown
