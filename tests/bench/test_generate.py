"""The generation loop: the loop's semantics with a fake step (positions advance, sampled
tokens feed the next step), the row arithmetic on synthetic step times, the interleaving, the
loop end to end on the CPU (tiny preset; eager only, and a fake runner as the graph arm),
bad input through the CLI, and the command on CUDA (`gpu`-marked)."""

import pytest
import torch
from click.testing import CliRunner

from microbench.bench.generate import (GenerateConfig, HostBatch, arm_fields, generate_once,
                                       interleaved, paired_speedup, run_generate)
from microbench.cli import main
from microbench.engine.shapes import MAX_CONTEXT
from microbench.report.record import load_run, write_run
from microbench.report.render import render_run
from tests.bench.fake_runner import FakeRunner

HAS_CUDA = torch.cuda.is_available()
VOCAB = 11


def counting_step(seen):
    """A step whose greedy token is (input token + 1) mod VOCAB; it records its inputs."""
    def step(v):
        seen.append((v.tokens.clone(), v.positions.clone(), v.slots.clone()))
        return torch.nn.functional.one_hot((v.tokens + 1) % VOCAB, VOCAB).float()
    return step


def test_generate_once_advances_positions_and_feeds_sampled_tokens():
    batch, seen = HostBatch("cpu"), []
    first = torch.tensor([0, 5, 9])
    ns, tokens = generate_once(counting_step(seen), batch, 3, first, input_len=7, n=4)
    assert len(ns) == 4 and all(t > 0 for t in ns)
    for i, (tok, pos, slots) in enumerate(seen):
        assert pos.tolist() == [7 + i] * 3                       # the context grows by one
        assert tok.tolist() == ((first + i) % VOCAB).tolist()    # last step's sampled token
        assert slots.tolist() == [0, 1, 2]
    assert tokens.tolist() == [((first + i + 1) % VOCAB).tolist() for i in range(4)]
    # a second generation starts over from the prompt
    seen.clear()
    generate_once(counting_step(seen), batch, 3, first, input_len=7, n=1)
    assert seen[0][1].tolist() == [7] * 3 and seen[0][0].tolist() == first.tolist()


def test_arm_fields_and_paired_speedup():
    gens = [[1000, 2000, 3000], [2000, 2000, 4000], [1000, 1000, 1000]]   # ns per step
    f = arm_fields("eager_", gens, bs=4)
    assert f["eager_latency_ms"] == pytest.approx(0.006)      # median of 6, 8, 3 us totals
    assert f["eager_tok_s"] == pytest.approx(4 * 3 / 6e-6)
    assert f["eager_step_us"] == 2.0 and f["eager_first_step_us"] == 1.0
    assert f["eager_last_step_us"] == 3.0
    res = dict(eager=[([4, 4], None), ([9, 3], None)], graph=[([2, 2], None), ([2, 4], None)])
    s = paired_speedup(res)
    assert s["speedup"] == pytest.approx((2 + 2) / 2)         # ratios 2 and 2
    assert paired_speedup(dict(eager=res["eager"]))["speedup"] is None


def test_interleaved_flips_order_and_drops_warmup():
    calls = []
    out = interleaved(dict(a="A", b="B"), warmup=1, repeats=3,
                      run_one=lambda s: calls.append(s) or len(calls))
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert out == dict(a=[4, 5, 8], b=[3, 6, 7])


@pytest.mark.parametrize("kw, option", [
    (dict(output_len=0), "--output-len"), (dict(input_len=0), "--input-len"),
    (dict(repeats=0), "--repeats"), (dict(warmup=-1), "--warmup"), (dict(bs=()), "--bs"),
    (dict(bs=(0,)), "--bs"), (dict(bs=(2, 2)), "--bs"), (dict(mode="half"), "--mode"),
    (dict(prefill="kernel"), "--prefill"), (dict(preset="gpt-5"), "--preset"),
    (dict(ladder="1,x"), "--ladder"), (dict(input_len=MAX_CONTEXT, output_len=1), "--output-len"),
])
def test_config_rejects(kw, option):
    with pytest.raises(ValueError, match=option):
        GenerateConfig(**kw).validate()


# ---- the loop end to end on the CPU --------------------------------------------------------
def cpu_config(**kw):
    base = dict(bs=(1, 3), preset="tiny", input_len=4, output_len=3, ladder="1,2,4",
                dtype="float32", backend="torch", repeats=2, warmup=1, out="unused")
    return GenerateConfig(**{**base, **kw})


def test_generate_eager_only_on_cpu(tmp_path):
    run = run_generate(cpu_config(mode="none"), device="cpu", make_runner=FakeRunner)
    assert [r["bs"] for r in run["rows"]] == [1, 3] and run["ladder"] == []
    r = run["rows"][1]
    assert r["ran_as"] == "eager" and r["padded_bs"] is None and r["speedup"] is None
    assert r["eager_tok_s"] == pytest.approx(3 * 3 / (r["eager_latency_ms"] / 1e3))
    assert "graph_latency_ms" not in r
    d = write_run(tmp_path / "g", run, csv_name="generate.csv")
    text = render_run(load_run(d))
    assert "prompt 4" in text and "tiny" in text
    from microbench.report.index import headline
    assert headline(run).startswith("eager only")


def test_generate_both_arms_with_a_fake_runner(tmp_path):
    run = run_generate(cpu_config(), device="cpu", make_runner=FakeRunner)
    r1, r3 = run["rows"]
    assert (r3["padded_bs"], r3["ran_as"]) == (4, "full")
    # eager and the fake runner run the same steps: the same greedy tokens
    assert r1["tokens_match"] == 1.0 and r3["tokens_match"] == 1.0
    # warm-up + timed generations of 3 steps, one padded row each step at bs 3
    assert (r3["graph_replays"], r3["graph_padded_rows"], r3["graph_fallbacks"]) == (9, 9, 0)
    assert r3["speedup"] > 0 and r3["graph_tok_s"] > 0
    assert run["capture"]["sizes"][-1]["size"] == 4 and run["wall_s"] > 0
    d = write_run(tmp_path / "g", run, csv_name="generate.csv")
    assert load_run(d)["kind"] == "generate"
    text = render_run(load_run(d))
    assert "graph ms" in text and "speedup" in text
    from microbench.report.index import headline
    assert headline(run).startswith("generation ") and "at bs 1" in headline(run)


def test_generate_rows_say_what_full_and_piecewise_ran():
    """ran_as is the runner's route: a full graph up to the full pass's cap, a piecewise graph
    above it, eager above the ladder."""
    cfg = cpu_config(mode="full_and_piecewise", bs=(1, 3, 5), repeats=1, warmup=0,
                     full_max_size=2)    # reaches the runner through the config
    run = run_generate(cfg, device="cpu", make_runner=FakeRunner)
    assert run["config"]["full_max_size"] == 2
    got = [(r["bs"], r["ran_as"], r["padded_bs"]) for r in run["rows"]]
    assert got == [(1, "full", 1), (3, "piecewise", 4), (5, "eager", None)]
    assert run["rows"][2]["graph_fallbacks"] == 3 and run["rows"][1]["graph_padded_rows"] == 3


@pytest.mark.parametrize("kw, match", [
    (dict(full_max_size=2), "only with --mode full_and_piecewise"),
    (dict(mode="full_and_piecewise", full_max_size=0), "out of range"),
])
def test_full_max_size_is_checked(kw, match):
    with pytest.raises(ValueError, match=f"^--full-max-size: .*{match}"):
        cpu_config(**kw).validate()


@pytest.mark.interpreter
def test_generate_triton_kernels_under_the_interpreter():
    """The Triton plan (fused attention writing each new position) through two growing steps."""
    cfg = cpu_config(bs=(2,), input_len=3, output_len=2, backend="triton", repeats=1, warmup=0)
    run = run_generate(cfg, device="cpu", make_runner=FakeRunner)
    assert run["rows"][0]["tokens_match"] == 1.0 and run["eager_bound"] is False


def test_generate_prefill_token_by_token_on_cpu():
    cfg = cpu_config(mode="none", prefill="steps", bs=(2,), repeats=1, warmup=0)
    run = run_generate(cfg, device="cpu")
    assert run["rows"][0]["prefill_ms"] > 0


# ---- the command ---------------------------------------------------------------------------
def cli(*args):
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


@pytest.mark.parametrize("args, option", [
    (("--output-len", "0"), "--output-len"), (("--input-len", "0"), "--input-len"),
    (("--bs", "0"), "--bs"), (("--bs", "2,2"), "--bs"), (("--repeats", "0"), "--repeats"),
    (("--mode", "half"), "--mode"), (("--prefill", "kernel"), "--prefill"),
    (("--ladder", "fast"), "--ladder"), (("--output-len", "x"), "--output-len"),
    (("--input-len", str(MAX_CONTEXT)), "--output-len"),
])
def test_cli_bad_options(tmp_path, args, option):
    code, out = cli("generate", *args, "--out", str(tmp_path / "o"))
    lines = [l for l in out.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and option in lines[0] and "Traceback" not in out, out


def test_cli_glue_on_cpu(tmp_path, monkeypatch):
    """The command's path past the GPU check (run on the CPU with a fake runner): the run
    folder, its CSV, the table, --format json."""
    import microbench.bench.generate as gen
    real = gen.run_generate
    monkeypatch.setattr("microbench.cli_serve.require_cuda", lambda cmd: None)
    monkeypatch.setattr(gen, "run_generate", lambda cfg, **kw: real(
        cfg, device="cpu", make_runner=FakeRunner, **kw))
    args = ["generate", "--preset", "tiny", "--dtype", "float32", "--backend", "torch", "--bs",
            "1,3", "--input-len", "4", "--output-len", "2", "--repeats", "1", "--warmup", "0",
            "--ladder", "1,2,4"]
    code, out = cli(*args, "--out", str(tmp_path / "a"))
    assert code == 0 and "graph tok/s" in out and "saved: " in out, out
    (d,) = list((tmp_path / "a").iterdir())
    assert (d / "generate.csv").read_text().startswith("bs,padded_bs") and "-generate-tiny-" in d.name
    code, out = cli(*args, "--out", str(tmp_path / "b"), "--format", "json", "--quiet")
    assert code == 0 and [r["bs"] for r in __import__("json").loads(out)] == [1, 3]


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
def test_cli_needs_a_gpu(tmp_path):
    code, out = cli("generate", "--out", str(tmp_path))
    assert code == 1 and "needs a CUDA GPU" in out


@pytest.mark.gpu
def test_generate_command_on_cuda(tmp_path):
    """A few short generations at bs 1 and 3 (padded to 4) with the context growing."""
    code, out = cli("generate", "--preset", "tiny", "--bs", "1,3", "--input-len", "8",
                    "--output-len", "6", "--ladder", "1,2,4", "--repeats", "3", "--warmup", "1",
                    "--out", str(tmp_path), "--quiet")
    assert code == 0, out
    (d,) = list(tmp_path.iterdir())
    run = load_run(d)
    r1, r3 = run["rows"]
    assert r3["padded_bs"] == 4 and r3["ran_as"] == "full"
    assert r3["graph_replays"] == 4 * 6 and r3["graph_padded_rows"] == 4 * 6
    for r in (r1, r3):
        assert r["eager_tok_s"] > 0 and r["graph_tok_s"] > 0 and r["speedup"] > 0
        assert 0 <= r["tokens_match"] <= 1
    assert run["capture"]["pool_bytes"] > 0 and (d / "generate.csv").is_file()
    code, shown = cli("show", str(d))
    assert code == 0 and "graph tok/s" in shown
