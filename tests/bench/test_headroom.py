"""memory-headroom under an engine's budget (`reproduce memory-headroom
--gpu-memory-utilization U`): its rows, verdict and report from a faked start-up on the CPU, the
option's errors, and on a GPU the start-up itself (bench.headroom.run_budget) with a capture
forced out of memory."""
import warnings
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from microbench.analysis import verdicts as vd
from microbench.analysis.budget import REPLAY_ATOL
from microbench.bench import headroom as hr
from microbench.bench import phenomena as ph
from microbench.bench import reproduce as rp
from microbench.cli import main
from microbench.bench.headroom import kv_block_bytes
from microbench.engine.memory import MemoryBudget, SKIPPED, kv_bytes_per_token, size_costs
from microbench.engine.shapes import PRESETS
from microbench.report.plots import entry_lines
from tests.bench.test_phenomena import FakeLab, fake_dec

GiB, MiB = 1 << 30, 1 << 20
gpu = pytest.mark.gpu
PER = kv_bytes_per_token(PRESETS["tiny"], 2)


def fake_budget(dec, sizes, utilization, context, say=None, on_capture=None, seed=0, **kw):
    """run_budget's shape without a GPU: the largest size holds 64 MiB, each other 1 MiB,
    and the largest is skipped when it is 512 (as if it ran out of memory)."""
    b = MemoryBudget(80 * GiB, utilization, GiB, 512 * MiB, 256 * MiB, PER)
    order = sorted(set(sizes), reverse=True)
    skipped = [512] if 512 in order else []
    captured = [dict(size=s, pool_bytes=64 * MiB if i == 0 else MiB)
                for i, s in enumerate(x for x in order if x not in skipped)]
    rows = [dict(r, replay_max_abs_diff=0.0) for r in size_costs(b, captured)]
    return dict(rows=rows, info=dict(budget=b.to_dict(), kv_block_bytes=b.kv_cache_bytes,
                                     decoder_kv_bytes=0, capture_s=1.0, skipped=skipped,
                                     skipped_status=SKIPPED, pool_bytes=rows[-1]["pool_bytes"],
                                     limit_bytes=None, sizes=sorted(sizes)))


@pytest.fixture
def entry(monkeypatch):
    monkeypatch.setattr(ph, "run_budget", fake_budget)
    cfg = rp.ReproduceConfig(names=("memory-headroom",), preset="tiny", context=32,
                             gpu_memory_utilization=0.9)
    lab = FakeLab(cfg, fake_dec(), cfg.context)
    res = ph.EXPERIMENTS["memory-headroom"].run(lab)
    return rp.make_entry("memory-headroom", res["rows"], res["info"], 0.1, judge=vd.judge)


def test_budget_rows_keep_the_headroom_columns_and_the_sizes(entry):
    rows, info = entry["rows"], entry["info"]
    assert rows[0]["n_sizes"] == 0 and rows[0]["size"] is None and rows[0]["tokens_lost"] == 0
    assert [r["size"] for r in rows[1:3]] == [496, 480]                  # largest first, 512 skipped
    assert info["budget_bytes"] == info["budget"]["kv_cache_bytes"]
    assert rows[0]["kv_tokens"] == info["budget"]["kv_tokens"]
    assert rows[1]["size_kv_tokens"] == 64 * MiB // PER and rows[1]["largest_size"] == 496
    assert rows[-1]["kv_tokens"] == rows[-1]["kv_tokens_if_budgeted"]
    assert list(rows[0]) == list(rows[1])                                # one CSV header


def test_budget_verdict_reports_the_budget_and_the_skipped_size(entry):
    assert entry["held"] is True, entry["why"]
    m = entry["measured"]
    assert m.startswith("0.9 of 80.00 GiB = 72.00 GiB") and "KV cache" in m
    assert f"{SKIPPED}: sizes [512]" in m
    notes = " ".join(entry["notes"])
    assert "Sizes [512] ran out of device memory" in notes and "Costliest sizes: 496" in notes
    assert "max |graph - eager| 0" in notes
    assert "memory-headroom" in entry_lines(entry)


def _entry_with(monkeypatch, spoil):
    """The faked start-up's entry, its rows spoiled by spoil(rows) before they are judged."""
    def spoiled(*a, **kw):
        res = fake_budget(*a, **kw)
        spoil(res["rows"])
        return res
    monkeypatch.setattr(ph, "run_budget", spoiled)
    cfg = rp.ReproduceConfig(names=("memory-headroom",), preset="tiny", gpu_memory_utilization=0.9)
    res = ph.EXPERIMENTS["memory-headroom"].run(FakeLab(cfg, fake_dec(), 32))
    return rp.make_entry("memory-headroom", res["rows"], res["info"], judge=vd.judge)


def _replay(size, diff):
    def spoil(rows):
        next(r for r in rows if r["size"] == size)["replay_max_abs_diff"] = diff
    return spoil


@pytest.mark.parametrize("diff", [0.5, 1 / 32, float("nan"), None])
def test_a_replay_unlike_eager_is_not_held(monkeypatch, diff):
    e = _entry_with(monkeypatch, _replay(480, diff))
    assert e["held"] is False, e["why"]
    assert e["why"] == ("the replay of sizes [480] differs from the eager step on the same batch "
                        "(max |graph - eager| over 0, or not recorded)")
    assert "NOT HELD" in entry_lines(e)


def test_budget_verdict_states_the_replay_tolerance_and_judges_no_constructed_check(entry):
    assert "each one's replay equals the eager step on the same batch (max |graph - eager| at " \
           "most 0 over the logits)" in entry["pass_if"]
    assert "held to 0" in " ".join(entry["notes"])
    # the tokens left are a running sum of pool growth here: their monotony is not judged
    assert "fall as sizes are added" not in entry["pass_if"]


def test_budget_config_checks():
    rp.ReproduceConfig(gpu_memory_utilization=1.0).validate()
    with pytest.raises(ValueError, match=r"^--gpu-memory-utilization: .*\(0, 1\]"):
        rp.ReproduceConfig(gpu_memory_utilization=0).validate()
    with pytest.raises(ValueError, match="not with --memory-budget"):
        rp.ReproduceConfig(gpu_memory_utilization=0.5, memory_budget_gib=1).validate()
    rp.ReproduceConfig(names=("speedup-fade", "memory-headroom"),
                       gpu_memory_utilization=0.5).validate()
    with pytest.raises(ValueError, match=r"^--gpu-memory-utilization: only memory-headroom"):
        rp.ReproduceConfig(names=("speedup-fade",), gpu_memory_utilization=0.5).validate()
    rp.ReproduceConfig(names=("memory-headroom",), memory_budget_gib=2.0).validate()
    with pytest.raises(ValueError, match=r"^--memory-budget: only memory-headroom"):
        rp.ReproduceConfig(names=("off-stride",), memory_budget_gib=2.0).validate()


@pytest.mark.parametrize("args", [("--gpu-memory-utilization", "1.5"),
                                  ("--gpu-memory-utilization", "0"),
                                  ("--gpu-memory-utilization", "x"),
                                  ("--gpu-memory-utilization", "0.5", "--memory-budget", "2")])
def test_bad_utilization_is_one_line_and_exit_2(args, tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "memory-headroom", *args, "--out", str(tmp_path)])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "--gpu-memory-utilization" in lines[0], r.output


def test_utilization_without_memory_headroom_is_one_line_and_exit_2(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "speedup-fade", "--gpu-memory-utilization", "0.5",
                                  "--out", str(tmp_path)])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "--gpu-memory-utilization" in lines[0], r.output


def _cache(nbytes):
    """A stand-in KV-cache tensor of nbytes (only its size is read)."""
    return SimpleNamespace(numel=lambda: nbytes // 2, element_size=lambda: 2)


def test_kv_block_is_the_budget_less_the_decoders_own_cache():
    b = MemoryBudget(80 * GiB, 0.5, GiB, 0, 0, PER)
    assert kv_block_bytes(b, GiB) == b.kv_cache_bytes - GiB
    assert kv_block_bytes(b, b.kv_cache_bytes) == 0
    with pytest.raises(ValueError, match=r"^--gpu-memory-utilization 0.5 leaves 39 GiB for the KV "
                                         r"cache; the decoder already holds 40 GiB"):
        kv_block_bytes(b, 40 * GiB)


def test_a_budget_below_the_decoders_own_cache_fails_the_experiment(monkeypatch):
    """The budget leaves 0.5 GiB of KV cache, the decoder holds 2 GiB: the run stops before it
    allocates or captures anything, and the entry says why in one line (not held)."""
    prof = dict(total_bytes=8 * GiB, free_bytes=4 * GiB, torch_bytes=3 * GiB,
                activation_bytes=0, non_torch_bytes=0)
    monkeypatch.setattr(hr, "profile_step", lambda *a, **kw: prof)
    dec = SimpleNamespace(**vars(fake_dec()), k_cache=[_cache(GiB)], v_cache=[_cache(GiB)],
                          weight_bytes=lambda: 3 * GiB // 2)
    cfg = rp.ReproduceConfig(names=("memory-headroom",), preset="tiny", gpu_memory_utilization=0.25)
    with pytest.raises(ValueError) as got:
        ph.EXPERIMENTS["memory-headroom"].run(FakeLab(cfg, dec, 32))
    assert str(got.value) == ("--gpu-memory-utilization 0.25 leaves 0.5 GiB for the KV cache; "
                              "the decoder already holds 2 GiB (its largest batch at --context); "
                              "raise it or lower --context")
    # run_reproduce records an experiment's exception as its entry's error (its last line)
    e = rp.make_entry("memory-headroom", [], {}, judge=vd.judge,
                      error=f"Traceback (most recent call last):\nValueError: {got.value}")
    assert e["held"] is False and e["measured"] == f"failed: ValueError: {got.value}"
    assert "memory-headroom: ERROR" in entry_lines(e) and str(got.value) in entry_lines(e)


# ---- on a GPU ------------------------------------------------------------------------------
def _decoder(max_batch):
    from microbench.engine.decoder import ToyDecoder
    dec = ToyDecoder(PRESETS["opt-125m"], max_batch=max_batch, max_seq=64, dtype=torch.bfloat16,
                     device="cuda", seed=0)
    dec.fill_cache(16)
    torch.cuda.synchronize()
    return dec


@gpu
def test_budget_start_up_charges_each_size_and_gives_memory_back():
    from microbench.bench.headroom import run_budget
    from microbench.bench.inputs import step_inputs
    dec = _decoder(64)
    dec.step(*step_inputs(dec.shape.vocab, 64, 16, "cuda"))   # cuBLAS's workspace exists before,
    torch.cuda.synchronize()                                   # as it does after (kept per stream)
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved()
    res = run_budget(dec, [1, 2, 4, 8, 64], 0.5, context=16)
    b, rows = res["info"]["budget"], res["rows"]
    assert b["kv_tokens"] == b["kv_cache_bytes"] // b["kv_bytes_per_token"] > 0
    assert b["activation_bytes"] > 0 and b["weight_bytes"] == dec.weight_bytes()
    assert res["info"]["kv_block_bytes"] == b["kv_cache_bytes"] - res["info"]["decoder_kv_bytes"]
    assert [r["size"] for r in rows] == [64, 8, 4, 2, 1] and res["info"]["skipped"] == []
    assert rows[0]["size_pool_bytes"] > 0
    assert sum(r["size_pool_bytes"] for r in rows) == res["info"]["pool_bytes"]
    # each size is an exact capture replaying the eager step's kernels on the same batch: bit
    # for bit, the tolerance the verdict holds every size to
    assert all(r["replay_max_abs_diff"] <= REPLAY_ATOL == 0 for r in rows)
    torch.cuda.empty_cache()
    assert abs(torch.cuda.memory_reserved() - held) <= 8 * MiB      # block and pool given back


@gpu
def test_budget_start_up_skips_a_capture_that_runs_out_of_memory():
    # As tests/engine/test_runner.py forces it: 48 MiB left for graphs; size 512's logits alone
    # need 49 MiB, size 1 runs the skinny Triton matmuls and needs no cuBLAS workspace.
    from microbench.bench.headroom import run_budget
    dec = _decoder(512)
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # the runner's warning is caught inside
        res = run_budget(dec, [1, 512], 0.5, context=16, say=said.append, limit_bytes=48 * MiB)
    assert res["info"]["skipped"] == [512]
    assert [r["size"] for r in res["rows"]] == [1] and res["rows"][0]["replay_max_abs_diff"] == 0
    assert any("size 512 ran out of device memory" in s for s in said)
    x = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")    # the cap was lifted again
    del x


def test_every_size_skipped_leaves_the_baseline_and_a_verdict(monkeypatch):
    def all_skipped(*a, **kw):
        res = fake_budget(*a, **kw)
        res["info"].update(skipped=sorted(kw.get("sizes") or a[1], reverse=True), pool_bytes=0)
        return dict(res, rows=[])
    monkeypatch.setattr(ph, "run_budget", all_skipped)
    cfg = rp.ReproduceConfig(names=("memory-headroom",), preset="tiny", gpu_memory_utilization=0.9)
    res = ph.EXPERIMENTS["memory-headroom"].run(FakeLab(cfg, fake_dec(), 32))
    assert [r["n_sizes"] for r in res["rows"]] == [0]
    e = rp.make_entry("memory-headroom", res["rows"], res["info"], judge=vd.judge)
    assert e["held"] is False and "skipped (out of memory): sizes [512, 496" in e["measured"]
    assert e["why"].startswith("the captured sizes took no KV tokens (every size skipped")
