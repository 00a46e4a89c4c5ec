"""GPU tests: graph replay equals eager execution, padding is harmless, pools are freed."""
import gc
import json
import warnings

import pytest
import torch

from microbench.engine.shapes import PRESETS
from microbench.engine.decoder import ToyDecoder
from microbench.engine.runner import GraphRunner

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


def test_backends_agree_on_opt125m():
    a = make("opt-125m", 8, "triton", torch.float32)
    b = make("opt-125m", 8, "torch", torch.float32)
    t, p, s = inputs(5, a.shape.vocab)
    # fp32 (no TF32: torch's default for matmuls); the backends differ in summation order only
    torch.testing.assert_close(a.step(t, p, s), b.step(t, p, s), atol=1e-3, rtol=1e-3)


SIZES = [1, 2, 4, 8, 16]


@pytest.mark.parametrize("preset", ["tiny", "opt-125m"])
@pytest.mark.parametrize("mode", ["none", "full", "full-split", "piecewise"])
def test_replay_equals_eager_for_every_batch(preset, mode):
    max_b = SIZES[-1] + 8
    dec = make(preset, max_b)
    ref = make(preset, max_b)  # same seed: same weights and cache, run eagerly
    split = mode == "full-split"   # the step as two graphs launched back to back
    mode = "full" if split else mode
    runner = GraphRunner(dec, SIZES, mode=mode, progress=False, split_launch=split)
    runner.capture()
    if mode == "full":
        assert all(len(e.graphs) == (2 if split else 1) for e in runner.entries.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bs above 16 falls back, by design
        for bs in range(1, max_b + 1):
            # start every batch from the same cache on both sides (copies keep addresses)
            for ck, rk in zip(dec.k_cache + dec.v_cache, ref.k_cache + ref.v_cache):
                ck.copy_(rk)
            t, p, s = inputs(bs, dec.shape.vocab, seed=bs)
            got = runner.step(t, p, s)
            want = ref.step(t, p, s)
            padded = runner.dispatcher.pad(bs)
            if padded in (None, bs) or mode == "none":
                # the same kernels on the same shapes: bitwise equal
                assert torch.equal(got, want), (bs, (got.float() - want.float()).abs().max())
            else:
                # padded rows change the matmul and attention-split shapes, hence rounding;
                # bf16 logits of magnitude ~5 have an ulp of 1/32
                torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.02)
            # every real sequence's cache holds exactly what eager wrote, except where the
            # padded batch's matmul rounded differently (same tolerance as above)
            for ck, rk in zip(dec.k_cache + dec.v_cache, ref.k_cache + ref.v_cache):
                real = s.long()
                if padded in (None, bs) or mode == "none":
                    assert torch.equal(ck[real], rk[real])
                else:
                    torch.testing.assert_close(ck[real].float(), rk[real].float(), atol=0.05, rtol=0.02)
    c = runner.counts
    n_graph = 0 if mode == "none" else SIZES[-1]
    assert c["replays"] == n_graph and c["fallbacks"] == (0 if mode == "none" else max_b - SIZES[-1])
    assert c["padded_rows"] == sum(runner.dispatcher.pad(b) - b for b in range(1, n_graph + 1))
    runner.close()


@pytest.mark.parametrize("preset", ["opt-125m", "llama-1b"])
def test_programmatic_dependent_launch_changes_no_result(preset, monkeypatch):
    """The step's Triton kernels launch with PDL (each waits for its predecessor before reading
    an activation): a bs-1 step, eager and replayed, equals the same step with PDL off bit for
    bit. A missing wait would read a half-written activation and differ."""
    from microbench.kernels import _compat, gemv
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs Hopper or newer")
    results = {}
    for pdl in (True, False):
        monkeypatch.setattr(_compat, "PDL", pdl)
        dec = make(preset, 2)
        assert gemv.use_pdl(dec.embed) == pdl
        runner = GraphRunner(dec, [1], mode="full", progress=False)
        runner.capture()
        outs = []
        for seed in range(3):
            t, p, s = inputs(1, dec.shape.vocab, seed=seed)
            outs += [dec.step(t, p, s), runner.step(t, p, s)]
        results[pdl] = torch.stack(outs)
        runner.close()
    assert torch.equal(results[True], results[False])


def test_packed_steps_with_shrinking_batches():
    dec, ref = make("opt-125m", 16), make("opt-125m", 16)
    runner = GraphRunner(dec, [4, 16], progress=False)
    runner.capture()
    for bs in (16, 3, 3, 9, 1, 16):
        for ck, rk in zip(dec.k_cache + dec.v_cache, ref.k_cache + ref.v_cache):
            ck.copy_(rk)
        t, p, s = inputs(bs, dec.shape.vocab, seed=bs)
        got = runner.step_packed(torch.stack([t, p, s]))
        # The graph ran the padded batch: its real rows must equal an eager step of that same
        # padded batch (padding rows: token 0, position 0, the scratch slot) bit for bit. (An
        # eager step of the bs rows alone may run other kernels: at one row the fused skinny
        # matmuls, at four cuBLAS; tests/test_decoder.py checks those agree.)
        pad = runner.dispatcher.pad(bs)
        z = torch.zeros(pad - bs, dtype=torch.long, device="cuda")
        want = ref.step(torch.cat([t, z]), torch.cat([p, z]), torch.cat([s, z + dec.scratch_slot]))[:bs]
        assert torch.equal(got, want), (bs, (got.float() - want.float()).abs().max())
        # stale rows of a larger batch were pointed back at the scratch slot, not replayed
        assert (runner._in[2, bs:pad] == dec.scratch_slot).all()
    assert runner.counts["replays"] == 6 and runner.counts["padded_rows"] == 1 + 1 + 7 + 3


def test_padded_replay_never_touches_other_slots():
    dec = make("tiny", 16)
    runner = GraphRunner(dec, [8], progress=False)
    runner.capture()
    before = [c.clone() for c in dec.k_cache + dec.v_cache]
    t, p, _ = inputs(3, dec.shape.vocab)
    s = torch.tensor([5, 0, 9], device="cuda")
    runner.step(t, p, s)
    for b, c in zip(before, dec.k_cache + dec.v_cache):
        diff = b != c
        for i in range(3):
            diff[s[i], :, p[i]] = False          # the real rows' new tokens
        diff[dec.scratch_slot] = False           # the padded rows' writes
        assert not diff.any()


def test_pool_is_freed_when_runner_is_dropped():
    dec = make("opt-125m", 32)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_reserved()
    runner = GraphRunner(dec, [1, 2, 4, 8, 16, 32], progress=False)
    rep = runner.capture()
    assert rep["pool_bytes"] > 0 and all(s["pool_bytes"] >= 0 for s in rep["sizes"])
    assert rep["sizes"][-1]["pool_bytes"] > 0  # the largest size, captured first, grew the pool
    runner.step(*inputs(3, dec.shape.vocab))
    runner.close()
    del runner
    gc.collect()
    torch.cuda.empty_cache()
    assert abs(torch.cuda.memory_reserved() - start) <= 1 << 20


def test_separate_pools_hold_more_than_one_shared_pool():
    dec = make("opt-125m", 32)
    sizes = [1, 2, 4, 8, 16, 32]
    shared = GraphRunner(dec, sizes, pool="shared", progress=False)
    a = shared.capture()["pool_bytes"]
    shared.close()
    separate = GraphRunner(dec, sizes, pool="separate", progress=False)
    b = separate.capture()["pool_bytes"]
    separate.close()
    assert b > a > 0


def test_out_of_memory_skips_a_size_and_captures_the_rest():
    # Sizes 1 and 512 only: size 1 runs the skinny Triton matmuls, so its capture needs no
    # cuBLAS workspace (each capture that calls cuBLAS puts a fresh one, tens of MiB, in the
    # pool: graphs.fresh_cublas_workspaces), and the headroom below holds it with room to spare.
    dec = make("opt-125m", 512)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # Leave ~48 MiB above what is reserved now: the 512 graph's logits alone need 49 MiB.
    frac = (torch.cuda.memory_reserved() + (48 << 20)) / total
    runner = GraphRunner(dec, [1, 512], progress=False)
    torch.cuda.set_per_process_memory_fraction(frac)
    try:
        with pytest.warns(RuntimeWarning, match="out of device memory"):
            rep = runner.capture()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert rep["skipped"] == [512] and sorted(runner.entries) == [1]
    ref = make("opt-125m", 512)
    for bs in (1, 3):   # 1 replays its graph; 3 has none left to pad to and runs eagerly
        t, p, s = inputs(bs, dec.shape.vocab)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = runner.step(t, p, s)
        assert torch.equal(got, ref.step(t, p, s))
    assert runner.counts["replays"] == 1 and runner.counts["fallbacks"] == 1
    runner.close()


def test_debug_flag_catches_moved_inputs():
    dec = make("tiny", 8)
    runner = GraphRunner(dec, [4], debug=True, progress=False)
    runner.capture()
    t, p, s = inputs(2, dec.shape.vocab)
    runner.step(t, p, s)                      # addresses as captured: fine
    saved = runner._in
    runner._in = runner._in.clone()           # simulate a static buffer that moved
    with pytest.raises(RuntimeError, match="moved"):
        runner.step(t, p, s)
    runner._in = saved
    runner.step(t, p, s)
    dec.k_cache[1] = dec.k_cache[1].clone()   # a KV cache the graph writes was replaced
    with pytest.raises(RuntimeError, match="moved"):
        runner.step(t, p, s)


def test_graph_replay_runs_the_eager_kernels():
    from microbench.bench.launch import count_kernels
    dec = make("tiny", 4)
    runner = GraphRunner(dec, [2], progress=False)
    runner.capture()
    t, p, s = inputs(2, dec.shape.vocab)
    eager = count_kernels(lambda: dec.step(t, p, s))
    # the plan counts one kernel per cuBLAS call; cuBLAS may add a split-K reduction
    assert eager >= sum(dec.launches_per_step(2).values())
    assert count_kernels(lambda: runner.step(t, p, s)) == eager
    runner.close()


def test_short_sweep_end_to_end(tmp_path):
    from click.testing import CliRunner

    from microbench.cli import main
    from microbench.report.record import load_run
    r = CliRunner().invoke(main, ["sweep", "--preset", "tiny", "--bs", "1,3", "--context", "32",
                                  "--time-budget", "0.05", "--steps", "2", "--out", str(tmp_path),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    (run_dir,) = list(tmp_path.iterdir())
    run = load_run(run_dir)
    assert [row["bs"] for row in run["rows"]] == [1, 3]
    row = run["rows"][1]
    assert row["padded_bs"] == 4 and row["ran_as"] == "full" and row["speedup"] > 0
    for k in ("eager_step_us", "graph_step_us", "eager_tok_s", "graph_tok_s",
              "predicted_speedup"):
        assert row[k] > 0
    assert run["env"]["gpu"] and run["capture_s"] > 0 and run["pool_bytes"] > 0
    assert (run_dir / "sweep.csv").read_text().startswith("bs,padded_bs")
    json.dumps(run)


def test_sweep_arms_side_by_side(tmp_path):
    """Every arm runs, agrees with eager, and is called graphed only if it launched a graph."""
    from microbench.bench.sweep import SweepConfig, run_sweep
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


def test_replay_survives_cublas_workspaces_being_freed():
    """Inductor's CUDA-graph trees free cuBLAS's workspaces around each recording; graphs
    holding cuBLAS GEMMs must own theirs (in their pool), or a replay writes freed memory."""
    dec, ref = make("opt-125m", 8), make("opt-125m", 8)
    runner = GraphRunner(dec, [4, 8], progress=False)
    runner.capture()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()               # gives freed segments back to the driver
    junk = torch.empty(256 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)
    for bs in (4, 8):
        t, p, s = inputs(bs, dec.shape.vocab, seed=bs)
        got = runner.step(t, p, s)
        torch.cuda.synchronize()
        assert torch.equal(got, ref.step(t, p, s))
    del junk
    runner.close()


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
