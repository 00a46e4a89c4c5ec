"""The graph runner: argument checks, routing and eager counts on the CPU; capture, replay,
padding, pools and fallbacks on CUDA (`gpu`-marked)."""
import gc
import warnings

import pytest
import torch

from microbench.engine.decoder import ToyDecoder
from microbench.engine.plan import Fusion
from microbench.engine.runner import GraphRunner, head_layers
from microbench.engine.shapes import PRESETS

gpu = pytest.mark.gpu
CTX = 40
TINY = PRESETS["tiny"]


def make(preset, max_batch, backend="triton", dtype=torch.bfloat16, seed=0, pdl=True):
    dec = ToyDecoder(PRESETS[preset], backend=backend, max_batch=max_batch, max_seq=64,
                     dtype=dtype, device="cuda", seed=seed, pdl=pdl)
    dec.fill_cache(CTX)
    return dec


def inputs(bs, vocab, seed=0, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.randint(vocab, (bs,), generator=g, device=device)
    positions = torch.randint(1, CTX, (bs,), generator=g, device=device)  # ragged histories
    slots = torch.randperm(bs, generator=g, device=device)
    return tokens, positions, slots


# ---- CPU: what needs no capture ------------------------------------------------------------
def cpu_decoder(max_batch=8):
    return ToyDecoder(TINY, backend="torch", max_batch=max_batch, max_seq=64,
                      dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("kw, match", [(dict(mode="eager"), "mode"), (dict(pool="global"), "pool"),
                                       (dict(order="random"), "order")])
def test_runner_rejects_unknown_options(kw, match):
    with pytest.raises(ValueError, match=f"unknown {match}"):
        GraphRunner(cpu_decoder(), [1, 2], **kw)


def test_runner_rejects_sizes_beyond_the_decoders_rows():
    with pytest.raises(ValueError, match="exceeds the decoder's max_batch"):
        GraphRunner(cpu_decoder(4), [1, 8])
    GraphRunner(cpu_decoder(4), [1, 8], mode="none")     # eager needs no static rows


def test_mode_none_runs_eager_and_counts_every_step():
    dec = cpu_decoder()
    dec.fill_cache(CTX)
    runner = GraphRunner(dec, [1, 2, 4], mode="none")
    assert runner.capture() == dict(capture_s=0.0, pool_bytes=0, sizes=[], skipped=[])
    assert runner.requested_sizes == [] and runner.dispatcher.pad(1) is None
    for bs in (1, 3, 8):
        t, p, s = inputs(bs, TINY.vocab, seed=bs, device="cpu")
        torch.testing.assert_close(runner.step(t, p, s), dec.step(t, p, s), atol=0, rtol=0)
    packed = torch.stack(inputs(2, TINY.vocab, device="cpu"))
    assert runner.step_packed(packed).shape == (2, TINY.vocab)
    # eager by choice is not a fallback: nothing to warn about
    assert runner.counts == dict(replays=0, eager_steps=4, fallbacks=0, padded_rows=0,
                                 real_rows=1 + 3 + 8 + 2, full_replays=0, piecewise_replays=0)


@pytest.mark.interpreter
def test_eager_steps_run_bound_steps_where_the_decoder_binds():
    """With bind_eager (the default on CUDA) a triton decoder's eager steps, by mode or by
    fallback, are its bound steps (made once per batch size), computing what a plain step does;
    the torch backend keeps plain steps."""
    dec = ToyDecoder(TINY, max_batch=8, max_seq=64, dtype=torch.float32, device="cpu")
    dec.fill_cache(CTX)
    runner = GraphRunner(dec, [1, 2], mode="none", bind_eager=True)
    for seed, bs in enumerate((3, 3, 5)):
        t, p, s = inputs(bs, TINY.vocab, seed=seed, device="cpu")
        torch.testing.assert_close(runner.step(t, p, s), dec.step(t, p, s), atol=1e-6, rtol=1e-6)
    packed = torch.stack(inputs(5, TINY.vocab, seed=9, device="cpu"))
    torch.testing.assert_close(runner.step_packed(packed), dec.step(*packed), atol=1e-6, rtol=1e-6)
    assert runner._eager_step(3) is runner._eager_step(3) is not None
    assert GraphRunner(cpu_decoder(), [1], mode="none", bind_eager=True)._eager_step(1) is None
    assert GraphRunner(dec, [1], mode="none")._eager_step(1) is None   # CPU: off by default


def test_uncaptured_runner_falls_back_and_says_so():
    """Before capture (or with every size skipped) the dispatcher holds no graph: each batch
    runs eagerly, is counted as a fallback, and warns once per batch size."""
    dec = cpu_decoder()
    runner = GraphRunner(dec, [1, 2])
    t, p, s = inputs(2, TINY.vocab, device="cpu")
    with pytest.warns(RuntimeWarning, match="batch size 2 exceeds"):
        runner.step(t, p, s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.step(t, p, s)                              # the second time, silently counted
    assert runner.counts["fallbacks"] == 2 and runner.counts["eager_steps"] == 2


def test_input_rows_are_fixed_views_of_one_buffer():
    runner = GraphRunner(cpu_decoder(), [1, 2, 4])
    both, tok, pos, slot = runner.input_rows(3)
    assert both.shape == (3, 3) and runner.input_rows(3)[0] is both   # cached, made once
    for i, row in enumerate((tok, pos, slot)):
        assert row.data_ptr() == both[i].data_ptr()
    # padding rows point at the scratch slot, position 0, so a padded replay is harmless
    assert runner.input_rows(4)[3].tolist() == [runner.decoder.scratch_slot] * 4


def test_head_layers_is_a_quarter_and_at_least_one():
    assert [head_layers(n) for n in (1, 2, 4, 16, 32)] == [1, 1, 1, 4, 8]


# ---- CUDA ----------------------------------------------------------------------------------
SIZES = [1, 2, 4, 8, 16]


@gpu
@pytest.mark.parametrize("preset", ["tiny", "opt-125m"])
@pytest.mark.parametrize("mode", ["none", "full", "full-split", "piecewise"])
def test_replay_equals_eager_for_every_batch(preset, mode):
    max_b = SIZES[-1] + 8
    dec = make(preset, max_b)
    ref = make(preset, max_b)  # same seed: same weights and cache, run eagerly
    split = mode == "full-split"   # the step as two graphs launched back to back
    mode = "full" if split else mode
    runner = GraphRunner(dec, SIZES, mode=mode, split_launch=split)
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


@gpu
@pytest.mark.parametrize("preset", ["opt-125m", "llama-1b"])
def test_programmatic_dependent_launch_changes_no_result(preset):
    """The step's Triton kernels launch with PDL (each waits for its predecessor before reading
    an activation): a bs-1 step, eager and replayed, equals the same step with PDL off, and with
    the next kernel let launch after the wait ("late"), bit for bit. A missing wait would read a
    half-written activation and differ."""
    from microbench.kernels import gemv
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs Hopper or newer")
    results = {}
    for pdl in (True, "late", False):
        dec = make(preset, 2, pdl=pdl)
        assert gemv.use_pdl(dec.embed, dec.pdl_at(1)) == bool(pdl)
        runner = GraphRunner(dec, [1], mode="full")
        runner.capture()
        outs = []
        for seed in range(3):
            t, p, s = inputs(1, dec.shape.vocab, seed=seed)
            # a replay's output is a view of its graph's static buffer, which the next replay
            # writes over: keep a copy
            outs += [dec.step(t, p, s), runner.step(t, p, s).clone()]
        results[pdl] = torch.stack(outs)
        runner.close()
    assert torch.equal(results[True], results[False])
    assert torch.equal(results["late"], results[False])


@gpu
@pytest.mark.parametrize("preset", ["tiny", "opt-125m"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_each_split_mode_replays_its_eager_step(preset, dtype):
    """The attention's four modes (engine/splits.py: the fused kernel's fill, capped and
    half-size tiles, and separate kernels) over long, ragged histories: each graph replays its
    own eager step bit for bit, and in float32 the four give the same logits within rounding
    (their splits merge in other orders; in bfloat16 an attention output an ulp apart grows
    through opt-125m's twelve random layers past any tolerance tight enough to catch a wrong
    merge)."""
    from microbench.engine import splits
    ctx, outs = 500, {}
    for mode in splits.MODES:
        dec = ToyDecoder(PRESETS[preset], max_batch=16, max_seq=576, dtype=dtype, device="cuda",
                         splits=mode)
        dec.fill_cache(ctx)
        runner = GraphRunner(dec, [1, 4, 16], mode="full")
        runner.capture()
        outs[mode] = []
        for bs in (1, 3, 16):
            g = torch.Generator(device="cuda").manual_seed(bs)
            t = torch.randint(dec.shape.vocab, (bs,), generator=g, device="cuda")
            p = torch.randint(ctx // 2, ctx, (bs,), generator=g, device="cuda")
            s = torch.randperm(bs, generator=g, device="cuda")
            caches = [c.clone() for c in dec.k_cache + dec.v_cache]
            got = runner.step(t, p, s)
            for c, saved in zip(dec.k_cache + dec.v_cache, caches):
                c.copy_(saved)
            want = dec.step(t, p, s)
            if runner.dispatcher.pad(bs) == bs:
                assert torch.equal(got, want), (mode, bs)
            else:   # bs 3 replays the graph of 4: other shapes, other rounding
                torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.02)
            # a copy: got is a view of the graph's static output, and in a shared pool another
            # size's replay may write over it (in float32 .float() returns got itself)
            outs[mode].append(got.float().clone())
        runner.close()
    # half-size tiles launch other splits than fill at every batch here: some logit rounds apart
    assert any(not torch.equal(a, b) for a, b in zip(outs["half-tile"], outs["fill"]))
    if dtype == torch.float32:
        for mode in ("capped", "half-tile", "separate"):
            for a, b in zip(outs[mode], outs["fill"]):
                torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-3)


@gpu
def test_a_separate_size_replays_its_eager_step_and_pads_from_a_fused_one(monkeypatch):
    """A table that runs the attention as separate kernels at bs 4 only: the graph of 4 replays
    its eager step bit for bit, and bs 3 (eager fused) padded to it gives its logits within
    rounding, as does bs 16 (fused both ways)."""
    from microbench.engine import splits
    monkeypatch.setattr(splits, "resolve", lambda s, *a: lambda b: "separate" if b == 4 else "fill")
    dec = ToyDecoder(PRESETS["tiny"], max_batch=16, max_seq=576, dtype=torch.float32,
                     device="cuda")
    dec.fill_cache(500)
    assert dec.fusion_at(4) == Fusion.MATMULS and dec.fusion_at(3) == Fusion.ATTENTION
    runner = GraphRunner(dec, [1, 4, 16], mode="full")
    runner.capture()
    for bs in (3, 4, 16):
        g = torch.Generator(device="cuda").manual_seed(bs)
        t = torch.randint(dec.shape.vocab, (bs,), generator=g, device="cuda")
        p = torch.randint(250, 500, (bs,), generator=g, device="cuda")
        s = torch.randperm(bs, generator=g, device="cuda")
        caches = [c.clone() for c in dec.k_cache + dec.v_cache]
        got = runner.step(t, p, s)
        for c, saved in zip(dec.k_cache + dec.v_cache, caches):
            c.copy_(saved)
        want = dec.step(t, p, s)
        if bs == 3:
            torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-3)
        else:
            assert torch.equal(got, want), bs
    runner.close()


@gpu
def test_packed_steps_with_shrinking_batches():
    dec, ref = make("opt-125m", 16), make("opt-125m", 16)
    runner = GraphRunner(dec, [4, 16])
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


@gpu
def test_padded_replay_never_touches_other_slots():
    dec = make("tiny", 16)
    runner = GraphRunner(dec, [8])
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


@gpu
def test_pool_is_freed_when_runner_is_dropped():
    dec = make("opt-125m", 32)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_reserved()
    runner = GraphRunner(dec, [1, 2, 4, 8, 16, 32])
    rep = runner.capture()
    assert rep["pool_bytes"] > 0 and all(s["pool_bytes"] >= 0 for s in rep["sizes"])
    assert rep["sizes"][-1]["pool_bytes"] > 0  # the largest size, captured first, grew the pool
    runner.step(*inputs(3, dec.shape.vocab))
    runner.close()
    del runner
    gc.collect()
    torch.cuda.empty_cache()
    assert abs(torch.cuda.memory_reserved() - start) <= 1 << 20


@gpu
def test_separate_pools_hold_more_than_one_shared_pool():
    dec = make("opt-125m", 32)
    sizes = [1, 2, 4, 8, 16, 32]
    shared = GraphRunner(dec, sizes, pool="shared")
    a = shared.capture()["pool_bytes"]
    shared.close()
    separate = GraphRunner(dec, sizes, pool="separate")
    b = separate.capture()["pool_bytes"]
    separate.close()
    assert b > a > 0


@gpu
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
    runner = GraphRunner(dec, [1, 512])
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


@gpu
def test_debug_flag_catches_moved_inputs():
    dec = make("tiny", 8)
    runner = GraphRunner(dec, [4], debug=True)
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


@gpu
def test_graph_replay_runs_the_eager_kernels():
    from microbench.bench.profile import count_kernels
    dec = make("tiny", 4)
    runner = GraphRunner(dec, [2])
    runner.capture()
    t, p, s = inputs(2, dec.shape.vocab)
    eager = count_kernels(lambda: dec.step(t, p, s))
    # the plan counts one kernel per cuBLAS call; cuBLAS may add a split-K reduction
    assert eager >= sum(dec.launches_per_step(2).values())
    assert count_kernels(lambda: runner.step(t, p, s)) == eager
    runner.close()


@gpu
def test_replay_survives_cublas_workspaces_being_freed():
    """Inductor's CUDA-graph trees free cuBLAS's workspaces around each recording; graphs
    holding cuBLAS GEMMs must own theirs (in their pool), or a replay writes freed memory."""
    dec, ref = make("opt-125m", 8), make("opt-125m", 8)
    runner = GraphRunner(dec, [4, 8])
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
