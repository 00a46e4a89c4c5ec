"""The sweep end to end on a GPU (its arms side by side, the compile arm's graphed check) and
reproduce end to end: `gpu`-marked, skipped without CUDA."""
import json
import time

import pytest
import torch

from microbench.engine.shapes import PRESETS
from microbench.engine.decoder import ToyDecoder

pytestmark = pytest.mark.gpu
CTX = 40


def make(preset, max_batch, backend="triton", dtype=torch.bfloat16, seed=0):
    dec = ToyDecoder(PRESETS[preset], backend=backend, max_batch=max_batch, max_seq=64,
                     dtype=dtype, device="cuda", seed=seed)
    dec.fill_cache(CTX)
    return dec


def inputs(bs, vocab, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    tokens = torch.randint(vocab, (bs,), generator=g, device="cuda")
    positions = torch.randint(1, CTX, (bs,), generator=g, device="cuda")  # ragged histories
    slots = torch.randperm(bs, generator=g, device="cuda")
    return tokens, positions, slots


def short_sweep(tmp_path):
    """`microbench sweep` of the tiny preset at bs 1 and 3, quick: (CLI result, run folder, run)."""
    from click.testing import CliRunner

    from microbench.cli import main
    from microbench.report.record import load_run
    r = CliRunner().invoke(main, ["sweep", "--preset", "tiny", "--bs", "1,3", "--context", "32",
                                  "--time-budget", "0.05", "--steps", "2", "--out", str(tmp_path),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    (run_dir,) = list(tmp_path.iterdir())
    return r, run_dir, load_run(run_dir)


def test_short_sweep_end_to_end(tmp_path):
    r, run_dir, run = short_sweep(tmp_path)
    assert [row["bs"] for row in run["rows"]] == [1, 3]
    row = run["rows"][1]
    assert row["padded_bs"] == 4 and row["ran_as"] == "full" and row["speedup"] > 0
    for k in ("eager_step_us", "graph_step_us", "eager_tok_s", "graph_tok_s",
              "predicted_speedup"):
        assert row[k] > 0
    assert run["env"]["gpu"] and run["capture_s"] > 0 and run["pool_bytes"] > 0
    # the launchers' kernels timed queued in a stream, and the model's gap read from them
    assert run["launch"]["gpu_us_per_kernel_queued"]["triton"]["median"] > 0
    assert run["profile"]["stream_gap_us"] >= 0
    assert (run_dir / "sweep.csv").read_text().startswith("bs,padded_bs")
    json.dumps(run)


def test_rows_on_a_slow_host_are_sampled_again_and_the_sweep_still_completes(tmp_path,
                                                                              monkeypatch):
    """Every probe slower than the host allows, and no time to wait it out: each row counts
    slow rounds, is taken back and sampled again ROW_RETRIES times, and the run that follows
    (device figures, the model, the graphed check, the profile) reads the kept rows only."""
    from microbench.bench import hostcpu
    from microbench.bench.sweep import ROW_RETRIES
    if not hostcpu.can_pin():
        pytest.skip("needs more than one CPU to pin to")
    from microbench.bench import sweep as sweep_mod
    monkeypatch.setattr(hostcpu, "THROTTLE", 1e-9)        # every probe: a slow host
    monkeypatch.setattr(hostcpu, "RECOVERY_S", 1e9)       # past any wait: no sleeping
    seen = {}
    last_phase = sweep_mod._Sweep.graphed_and_profiled

    def spy(self):   # what the last phases read: the kept rows' entries only
        seen.update(rows=[id(r) for r in self.run["rows"]],
                    measured=[id(r) for r, _ in self.measured],
                    profiled=[id(e[4]) for e in self.to_profile],
                    graphed={id(a[1]) for a in self.arm_fns})
        return last_phase(self)
    monkeypatch.setattr(sweep_mod._Sweep, "graphed_and_profiled", spy)
    drawn, draw = [], sweep_mod.step_inputs

    def inputs_spy(vocab, bs, *a):   # each try of a row draws the same inputs
        t, p, s = draw(vocab, bs, *a)
        if len(a) == 3:              # a row's draw, from the sweep's generator
            drawn.append((bs, t.tolist(), p.tolist(), s.tolist()))
        return t, p, s
    monkeypatch.setattr(sweep_mod, "step_inputs", inputs_spy)
    r, _, run = short_sweep(tmp_path)
    assert [row["bs"] for row in run["rows"]] == [1, 3]
    for row in run["rows"]:
        assert row["host_pin"]["slow_rounds"] > 0
        assert len(row["host_pin"]["retried_slow_rounds"]) == ROW_RETRIES
        assert row["predicted_speedup"] > 0 and row["graph_graphed"] is True
    assert sorted(run["graph_gpu_breakdown"]) == ["1", "3"]
    assert len(seen["rows"]) == 2 and seen["measured"] == seen["profiled"] == seen["rows"]
    assert seen["graphed"] == set(seen["rows"])
    assert [d[0] for d in drawn] == [1] * (ROW_RETRIES + 1) + [3] * (ROW_RETRIES + 1)
    assert all(d == drawn[0] for d in drawn[:ROW_RETRIES + 1])
    assert all(d == drawn[-1] for d in drawn[ROW_RETRIES + 1:])
    assert (f"sampled again after a slow host outlasted the wait: bs 1 ({ROW_RETRIES} tries "
            f"dropped), bs 3 ({ROW_RETRIES} tries dropped)") in r.output


def test_sweep_full_and_piecewise_with_full_max_size(tmp_path):
    """--full-max-size caps the full pass: bs 1 replays a full graph, bs 3 (padded to 4, above
    the cap) a piecewise one; the capture report holds both passes."""
    from click.testing import CliRunner

    from microbench.cli import main
    from microbench.report.record import load_run
    r = CliRunner().invoke(main, ["sweep", "--preset", "tiny", "--bs", "1,3", "--context", "32",
                                  "--ladder", "1,2,4", "--mode", "full_and_piecewise",
                                  "--full-max-size", "2", "--time-budget", "0.05", "--steps",
                                  "2", "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output
    (run_dir,) = list(tmp_path.iterdir())
    run = load_run(run_dir)
    assert run["config"]["full_max_size"] == 2
    assert [(row["ran_as"], row["padded_bs"]) for row in run["rows"]] == [("full", 1),
                                                                          ("piecewise", 4)]
    passes = {p["routine"]: p["sizes"] for p in run["capture"]["passes"]}
    assert passes == dict(piecewise=[1, 2, 4], full=[1, 2])


def test_repeat_interleaved_end_to_end(tmp_path):
    """--repeat 2 at TP 1: two real processes that take the GPU in turns (bench.turns), merged;
    each waited for the other's phases, and that wait is not counted in its wall time."""
    from click.testing import CliRunner

    from microbench.cli import main
    from microbench.report.record import load_run
    t0 = time.perf_counter()
    r = CliRunner().invoke(main, ["sweep", "--preset", "tiny", "--bs", "1,3", "--context", "32",
                                  "--time-budget", "0.05", "--steps", "2", "--no-pin-cpu",
                                  "--repeat", "2", "--out", str(tmp_path), "--quiet"])
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    (run_dir,) = list(tmp_path.iterdir())
    run = load_run(run_dir)
    # without the host pin no row counts slow rounds, so none is replaced
    assert run["repeats"]["mode"] == "interleaved" and run["repeats"]["kept"] == [1, 2]
    assert all(len(row["speedup_repeats"]) == 2 for row in run["rows"])
    # the two ran in turns, so their own times add up to less than the whole; each waited
    # for the other's phases, and that wait is kept apart
    assert sum(run["repeats"]["wall_s"]) < elapsed
    assert all(w > 0 for w in run["repeats"]["turn_wait_s"])
    assert "fresh processes taking the GPU in turns" in r.output


def test_sweep_arms_side_by_side(tmp_path):
    """Every arm runs, agrees with eager, and is called graphed only if it launched a graph."""
    from microbench.bench.sweep import run_sweep
    from microbench.bench.sweep_config import SweepConfig
    cfg = SweepConfig(bs=(1, 3), preset="tiny", context=32, time_budget=0.05, steps=2,
                      out=str(tmp_path), arms=("eager", "graph", "torch-eager", "torch-graph", "compile"))
    run = run_sweep(cfg)
    arms = run["arms"]
    assert arms["eager"]["graphed"] is False and arms["torch-eager"]["graphed"] is False
    assert arms["graph"]["graphed"] and arms["torch-graph"]["graphed"]
    assert arms["compile"]["graphed"] and arms["compile"]["inductor_cudagraph_skips"] == 0
    assert arms["compile"]["setup_s"] > 0 and arms["torch-graph"]["setup_s"] > 0
    for row in run["rows"]:
        assert row["graph_graphed"] and row["torch_graph_graphed"] and row["compile_graphed"]
        assert not row["eager_graphed"] and not row["torch_eager_graphed"]
        for k in ("torch_eager", "torch_graph", "compile"):
            assert row[f"{k}_step_us"] > 0
            assert row[f"{k}_max_abs_diff"] < 0.25  # bf16 logits (|x| ~ 10: ulp 1/16) of another backend
        assert row["compile_setup_s"] > 0
    assert run["eager_gpu_busy_us"] > 0


def test_compile_arm_without_static_addresses_is_not_called_graphed(monkeypatch):
    """The trap the compile arm is built around: a cache written inside the compiled step that
    is not marked static makes CUDA-graph trees skip the graph; the check must say so."""
    import torch._dynamo

    from microbench.bench import arms
    dec = make("tiny", 4)
    twin = arms.torch_twin(dec)
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t: None)
    torch._dynamo.reset()
    step = arms.CompiledStep(twin)
    t, p, s = inputs(2, dec.shape.vocab, seed=5)
    step.prepare(t, p, s)
    assert not arms.launched_graph(lambda: step(t, p, s))
    assert step.skips > 0
    torch._dynamo.reset()


def test_reproduce_ladder_collapse_end_to_end(tmp_path):
    from click.testing import CliRunner

    from microbench.cli import main
    from microbench.report.record import load_run
    r = CliRunner().invoke(main, ["reproduce", "ladder-collapse", "--preset", "tiny",
                                  "--context", "32", "--time-budget", "0.05", "--steps", "2",
                                  "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "ladder-collapse: " in r.output and "report: " in r.output
    (run_dir,) = list(tmp_path.iterdir())
    run = load_run(run_dir)
    (e,) = run["phenomena"]
    assert e["name"] == "ladder-collapse" and isinstance(e["held"], bool) and "error" not in e
    assert e["expected"] and e["measured"] and not e["measured"].startswith("incomplete")
    ran = {(row["arm"], row["bs"]): row["ran_as"] for row in e["rows"]}
    assert ran == {("collapsed", 1): "full", ("collapsed", 4): "eager", ("piecewise", 1): "full",
                   ("piecewise", 4): "piecewise", ("explicit", 1): "full", ("explicit", 4): "full"}
    assert all(row["step_us"] > 0 and row["tok_s"] > 0 for row in e["rows"])
    assert run["memory"]["free_after_decoder_bytes"] > 0 and run["wall_s"] > 0
    assert (run_dir / "ladder-collapse.csv").read_text().startswith("arm,capture_sizes,bs,")
    report = (run_dir / "report.md").read_text()
    assert "## ladder-collapse: " in report and e["measured"] in report
