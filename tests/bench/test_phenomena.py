"""`microbench reproduce` (bench.phenomena, bench.lab, bench.reproduce) on the CPU: every experiment's plumbing on a fake lab (synthetic step
times and pools, so no GPU), the verdicts on measurements that should hold and should not, the
report from a saved run with and without matplotlib, and the command's errors."""
import copy
import functools
import json
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from microbench.bench import phenomena as ph
from microbench.bench import reproduce as rp
from microbench.analysis import judging
from microbench.analysis import verdicts as vd
from microbench.cli import main
from microbench.engine.shapes import PRESETS
from microbench.engine.dispatch import PaddingDispatcher
from microbench.analysis.beside import predict_fade
from microbench.analysis.model import DeviceProfile
from microbench.report.plots import entry_lines, render_report
from microbench.report.record import load_run, write_reproduce_run

HAS_CUDA = torch.cuda.is_available()
CFG = rp.ReproduceConfig(preset="tiny", context=32, steps=1, time_budget=0.01)


class Step(tuple):
    """A fake step's output: (bs, graph size, mode) for the fake clock, and as logits (what
    measure_row checks against the reference arm's) the same values whatever the arm."""
    def float(self):
        return torch.zeros(2)


class FakeRunner:
    """Routes like GraphRunner; its 'pool' follows a fixed rule: a shared pool keeps the
    largest size's activations (ACT B per row, an OPT-125m-like 0.38 GiB at 512 rows) plus
    every graph's outputs (OUT B per row: the tiny preset's logits); smallest-first grows its
    segments at every size; separate pools keep both per graph."""
    ACT, OUT = 800_000, 1024

    def __init__(self, sizes, mode, pool="shared", order="largest-first"):
        sizes = sorted(set(sizes)) if mode != "none" else []
        self.mode, self.dispatcher, self.last = mode, PaddingDispatcher(sizes), None
        grown, prev = [], 0
        for s in sizes:
            if pool == "separate":
                g = (self.ACT + self.OUT) * s
            elif order == "smallest-first":
                g = self.ACT * (s - prev) + (self.OUT + 50) * s
            else:
                g = (self.ACT * s if s == sizes[-1] else 0) + self.OUT * s
            prev = s
            grown.append(dict(size=s, warmup_s=0.01 + s * 1e-5, capture_s=0.005, pool_bytes=g))
        self.report = dict(capture_s=sum(g["warmup_s"] + g["capture_s"] for g in grown),
                           pool_bytes=sum(g["pool_bytes"] for g in grown), sizes=grown, skipped=[])

    def step_packed(self, x):
        bs = x.shape[1]
        self.last = Step((bs, self.dispatcher.pad(bs), self.mode))
        return self.last

    def close(self):
        pass


class FakeLab(ph.Lab):
    """Step times of a launch-bound toy: eager 7000 + 2·bs us; a full graph 600 + 5·padded us;
    piecewise 100 us more. Spread ±1%."""

    def capture(self, sizes, mode="full", **kw):
        self.runner = FakeRunner(sizes, mode, **kw)
        return self.runner

    def engine_step(self, bs, x):
        """The engine-eager arm: the unfused plan's eager step, 2000 us more than eager's."""
        return lambda: Step((bs, None, "engine"))

    def time(self, fn):
        bs, pad, mode = fn()
        us = 7000 + 2 * bs if pad is None else 600 + 5 * pad + (100 if mode == "piecewise" else 0)
        us += 2000 if mode == "engine" else 0
        return dict(step_us=us, p20=0.99 * us, p80=1.01 * us, n=10, event_us=0.9 * us)

    def arm_timer(self, prefix, scale=1.0):
        """A paired row's arm, timed alone by the fake clock (no rotation on the CPU)."""
        return lambda fn, row: {prefix + k: v for k, v in self.time(fn).items()}

    def launch(self):
        return {}

    def gpu(self):
        return "fake"


# the model beside speedup-fade's rows, on a fixed device profile
PREDICT = functools.partial(predict_fade, profile=DeviceProfile(
    name="fake", source="test", copy_bw=3e12, matmul_flops=7e14))


def fake_dec(*_):
    from microbench.engine.plan import Fusion
    return SimpleNamespace(device=torch.device("cpu"), shape=PRESETS["tiny"],
                           attention_launches=lambda b: 2, skinny=lambda b: b <= 1,
                           fusion_at=lambda b: Fusion.ATTENTION)


def build_fake_run() -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ph, "build_decoder", fake_dec)
        mp.setattr(ph, "free_memory", lambda: 80 << 30)
        lab = FakeLab(CFG, fake_dec(), CFG.context, predict=PREDICT)
        lab.cache["free_after_decoder"] = 16 << 30
        entries = []
        for name in ph.NAMES:
            res = ph.EXPERIMENTS[name].run(lab)
            entries.append(rp.make_entry(name, res["rows"], res["info"], 0.1, judge=vd.judge))
    return dict(kind="reproduce", config=CFG.to_dict(), shape=PRESETS["tiny"].to_dict(),
                env=dict(gpu="Test GPU", torch="x", triton="y", command="microbench reproduce"),
                memory=dict(total_bytes=80 << 30, free_after_decoder_bytes=1 << 26,
                            weight_bytes=1 << 20, kv_cache_bytes=1 << 22, max_batch=512),
                phenomena=entries, interrupted=False, wall_s=1.5)


@pytest.fixture(scope="module")
def fake_run():
    return build_fake_run()


def entry(run, name):
    return copy.deepcopy(next(e for e in run["phenomena"] if e["name"] == name))


def rejudge(e):
    return rp.make_entry(e["name"], e["rows"], e["info"], judge=vd.judge)


def retime(row, us, p=""):
    """Set a row's timing (prefix p) to `us` with a ±1% spread, and its throughput with it."""
    row.update({f"{p}step_us": us, f"{p}p20": 0.99 * us, f"{p}p80": 1.01 * us})
    if not p and "tok_s" in row:
        row.update(tok_s=row["bs"] / us * 1e6, tok_s_per_seq=1e6 / us)


# ---- the experiments on a fake lab ---------------------------------------------------------
def test_every_experiment_holds_on_a_consistent_lab(fake_run):
    for e in fake_run["phenomena"]:
        assert e["held"] is True, (e["name"], e["why"], e["measured"])
        assert e["rows"] and e["measured"] and e["expected"] and e["source"]
        assert list(e)[:4] == ["name", "expected", "measured", "held"]


def test_experiments_route_as_published(fake_run):
    lc = entry(fake_run, "ladder-collapse")["rows"]
    assert [(r["arm"], r["bs"], r["ran_as"], r["padded_bs"]) for r in lc] == [
        ("collapsed", 1, "full", 1), ("collapsed", 4, "eager", None),
        ("piecewise", 1, "full", 1), ("piecewise", 4, "piecewise", 4),
        ("explicit", 1, "full", 1), ("explicit", 4, "full", 4)]
    off = entry(fake_run, "off-stride")
    assert [(r["arm"], r["bs"], r["ran_as"], r["ladder_max"]) for r in off["rows"]] == [
        ("before fix", 688, "full", 688), ("before fix", 700, "eager", 688),
        ("after fix", 700, "full", 700)]
    assert off["info"]["context"] == 128
    pw = entry(fake_run, "padding-waste")["rows"]
    assert [(r["arm"], r["padded_bs"], r["padded_rows"]) for r in pw] == [
        ("exact", 37, 0), ("stride-8", 40, 3), ("pow2", 64, 27), ("eager", None, 0)]
    pg = entry(fake_run, "pool-growth")["rows"]
    assert sorted({r["n_sizes"] for r in pg}) == [1, 2, 4, 8, 16, 32, 51]
    assert {r["arm"] for r in pg} == {"shared, largest-first", "shared, smallest-first", "separate"}
    mh = entry(fake_run, "memory-headroom")["rows"]
    assert mh[0]["n_sizes"] == 0 and mh[0]["tokens_lost"] == 0


def test_capture_cost_and_speedup_rows(fake_run):
    cc = entry(fake_run, "capture-cost")
    r = cc["rows"][0]
    assert r["bs"] == 1 and r["saved_us"] == pytest.approx(7002 - 605)
    assert r["break_even_steps"] == pytest.approx(r["size_capture_s"] * 1e6 / r["saved_us"])
    assert len(cc["info"]["sizes"]) == 51
    sf = entry(fake_run, "speedup-fade")["rows"]
    assert [r["bs"] for r in sf] == [1, 4, 16, 64]
    assert all(r["speedup"] > 1 and r["predicted_speedup"] > 0 for r in sf)


# ---- verdicts that should not hold ---------------------------------------------------------
def _speedup_rises(e):
    e["rows"][-1]["speedup"] = 3 * e["rows"][0]["speedup"]


def _collapsed_is_not_slower(e):
    c4 = next(r for r in e["rows"] if r["arm"] == "collapsed" and r["bs"] == 4)
    x4 = next(r for r in e["rows"] if r["arm"] == "explicit" and r["bs"] == 4)
    retime(c4, x4["step_us"] * 1.02)


def _fix_changes_nothing(e):
    a = next(r for r in e["rows"] if r["arm"] == "after fix")
    b = next(r for r in e["rows"] if r["arm"] == "before fix" and r["bs"] == 700)
    retime(a, b["step_us"])
    a["ran_as"] = "eager"


def _padding_is_free(e):
    ex = next(r for r in e["rows"] if r["arm"] == "exact")
    for r in e["rows"]:
        if r["arm"] in ("stride-8", "pow2"):
            retime(r, ex["step_us"])
    e["rows"] = ph.padding_costs(e["rows"])


def _separate_pools_smaller(e):
    for r in e["rows"]:
        if r["arm"] == "separate":
            r["pool_bytes"] //= 4


def _graph_never_faster(e):
    e["rows"][-1]["break_even_steps"] = None


def _piecewise_as_fast_as_full(e):
    for r in e["rows"]:
        retime(r, r["full_step_us"] * 0.9, "piecewise_")


def _pool_takes_nothing(e):
    rows = [dict(r, pool_bytes=0) for r in e["rows"][1:]]
    e["rows"] = ph.headroom_rows(rows, e["info"]["budget_bytes"], e["info"]["kv_bytes_per_token"])


@pytest.mark.parametrize("name, spoil, why", [
    ("speedup-fade", _speedup_rises, "rises with batch size"),
    ("ladder-collapse", _collapsed_is_not_slower, "not faster at bs 4"),
    ("off-stride", _fix_changes_nothing, "did not replay a graph"),
    ("padding-waste", _padding_is_free, "costs nothing measurable"),
    ("pool-growth", _separate_pools_smaller, "separate pools do not hold more"),
    ("capture-cost", _graph_never_faster, "never pays back"),
    ("piecewise-vs-full", _piecewise_as_fast_as_full, "full graphs are slower"),
    ("memory-headroom", _pool_takes_nothing, "do not fall"),
])
def test_verdict_does_not_hold(fake_run, name, spoil, why):
    e = entry(fake_run, name)
    spoil(e)
    got = rejudge(e)
    assert got["held"] is False and why in got["why"], got["why"]
    assert "NOT HELD" in entry_lines(got) and why in entry_lines(got)


def test_missing_arm_or_error_is_not_held(fake_run):
    e = entry(fake_run, "ladder-collapse")
    e["rows"] = [r for r in e["rows"] if r["arm"] != "explicit"]
    got = rejudge(e)
    assert got["held"] is False and got["measured"].startswith("incomplete measurements")
    err = rp.make_entry("off-stride", [], {}, error="Traceback ...\nRuntimeError: boom\n", judge=vd.judge)
    assert err["held"] is False and err["measured"] == "failed: RuntimeError: boom"


def test_off_stride_says_when_it_was_scaled_down(fake_run):
    e = entry(fake_run, "off-stride")
    assert not any("Scaled down" in n for n in rejudge(e)["notes"])
    e["info"]["context"] = 64
    assert any("Scaled down: the context is 64, not 128" in n for n in rejudge(e)["notes"])


def test_noise_aware_comparison():
    row = lambda us, spread=0.0: dict(step_us=us, p20=us * (1 - spread / 2), p80=us * (1 + spread / 2))
    assert not judging.slower(row(106), row(100))            # 3% + 3% floors: within noise
    assert judging.slower(row(107), row(100))
    assert not judging.slower(row(130, 0.2), row(100, 0.1))  # measured spreads widen the band
    assert judging.noise(dict(full_step_us=100, full_p20=90, full_p80=110), "full_") == pytest.approx(0.2)


# ---- pure helpers --------------------------------------------------------------------------
def test_pool_ns_and_kv_bytes():
    assert ph.pool_ns(51) == [1, 2, 4, 8, 16, 32, 51]
    assert ph.pool_ns(1) == [1] and ph.pool_ns(2) == [1, 2] and ph.pool_ns(4) == [1, 2, 4]
    # OPT-125m: 2 (K and V) x 12 layers x 12 heads x 64 x 2 bytes
    assert ph.kv_bytes_per_token(PRESETS["opt-125m"], 2) == 36864


def test_headroom_rows():
    pools = [dict(n_sizes=1, largest_size=1, pool_bytes=250),
             dict(n_sizes=2, largest_size=2, pool_bytes=1500)]
    rows = ph.headroom_rows(pools, budget=1000, per_token=10)
    assert [r["kv_tokens"] for r in rows] == [100, 75, 0]          # never below zero
    assert [r["tokens_lost"] for r in rows] == [0, 25, 100]
    assert rows[1]["share_lost"] == pytest.approx(0.25)


def test_padding_costs():
    rows = [dict(arm="exact", bs=37, padded_bs=37, step_us=100.0),
            dict(arm="pow2", bs=37, padded_bs=64, step_us=127.0),
            dict(arm="eager", bs=37, padded_bs=None, step_us=900.0)]
    out = ph.padding_costs(rows)
    assert out[1]["padded_rows"] == 27 and out[1]["us_per_padded_row"] == pytest.approx(1.0)
    assert out[1]["extra_pct"] == pytest.approx(0.27)
    assert out[2]["padded_rows"] == 0 and out[2]["us_per_padded_row"] is None


def test_config():
    assert rp.ReproduceConfig(names=("ladder-collapse",)).max_batch() == 4
    assert rp.ReproduceConfig().max_batch() == 512
    assert rp.ReproduceConfig(names=("memory-headroom", "speedup-fade")).ordered_names() == [
        "speedup-fade", "memory-headroom"]
    with pytest.raises(ValueError, match="NAMES: unknown experiment 'nope'; choose from speedup-fade"):
        rp.ReproduceConfig(names=("nope",)).validate()
    with pytest.raises(ValueError, match="--memory-budget"):
        rp.ReproduceConfig(memory_budget_gib=0).validate()


# ---- the report, from a saved run ----------------------------------------------------------
def test_saved_run_round_trips_with_csvs(fake_run, tmp_path):
    d = write_reproduce_run(tmp_path / "r", fake_run)
    run = load_run(d)
    assert [e["name"] for e in run["phenomena"]] == list(ph.NAMES)
    assert all(isinstance(e["held"], bool) for e in run["phenomena"])
    for e in run["phenomena"]:
        header = (d / f"{e['name']}.csv").read_text().splitlines()[0]
        assert header == ",".join(e["rows"][0])          # row field order is the column order
    assert not (d / "sweep.csv").exists()


def test_report_with_plots(fake_run, tmp_path):
    pytest.importorskip("matplotlib")
    run = json.loads(json.dumps(fake_run))                # as loaded from run.json
    path = render_report(run, tmp_path)
    text = path.read_text()
    for name in ("speedup-fade", "pool-growth", "piecewise-vs-full", "capture-cost"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name}.png)" in text
    assert "Plots skipped" not in text
    assert not list(tmp_path.glob(".*tmp*"))              # written under a temporary name, renamed


def test_report_without_matplotlib(fake_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run = copy.deepcopy(fake_run)
    bad = rp.make_entry("off-stride", [], {}, error="Traceback ...\nRuntimeError: boom\n", judge=vd.judge)
    run["phenomena"][2] = bad
    run["phenomena"][3]["held"], run["phenomena"][3]["why"] = False, "padding was free"
    text = render_report(run, tmp_path).read_text()
    assert "Plots skipped: matplotlib is not installed" in text and not list(tmp_path.glob("*.png"))
    for name in ph.NAMES:
        assert f"## {name}: " in text
    assert "## off-stride: ERROR" in text and "RuntimeError: boom" in text
    assert "## padding-waste: NOT HELD" in text and "did not reproduce" in text
    assert "## speedup-fade: HELD" in text and "| bs | eager us |" in text
    assert "Test GPU" in text and "Where the figure comes from" in text


# ---- the command ---------------------------------------------------------------------------
def invoke(*args):
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def test_unknown_experiment_is_a_one_line_usage_error(tmp_path):
    code, out = invoke("reproduce", "ladder-collapse", "warp-drive", "--out", str(tmp_path))
    lines = [l for l in out.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1, out
    assert "'warp-drive'" in lines[0] and all(n in lines[0] for n in ph.NAMES)


@pytest.mark.parametrize("args, option", [
    (("--steps", "0"), "--steps"), (("--time-budget", "0"), "--time-budget"),
    (("--context", "0"), "--context"), (("--preset", "gpt-5"), "--preset"),
    (("--memory-budget", "0"), "--memory-budget"), (("--bs", "1,,4"), "--bs"),
])
def test_bad_options(args, option):
    code, out = invoke("reproduce", *args)
    lines = [l for l in out.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and option in lines[0], out


def test_unwritable_out(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    code, out = invoke("reproduce", "--out", str(f / "sub"))
    assert code == 2 and "--out" in out and len(out.strip().splitlines()) == 1


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
def test_reproduce_says_it_needs_a_gpu(tmp_path):
    code, out = invoke("reproduce", "off-stride", "--out", str(tmp_path))
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "needs a CUDA GPU" in lines[0]
    assert "reproduce" in lines[0]
