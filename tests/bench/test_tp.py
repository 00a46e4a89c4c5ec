"""Tensor parallelism: sharding, ranks, validation, the model's all-reduce term, tables.

CPU: two gloo ranks (torch.multiprocessing spawn) run sharded decoders (torch backend, float32)
against the unsharded one. GPU (two CUDA GPUs, NCCL): graph replay equals eager execution at
TP 2 for every batch size of a small ladder; the TP sweep and the all-reduce benchmark end to end.
"""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from microbench.analysis import model_tp as mtp
from microbench.engine.shapes import PRESETS, ModelShape, tp_shape, valid_tp
from microbench.engine.decoder import ToyDecoder
from microbench.bench.tp import (NO_MULTICAST, RankFailed, bind_all_reduce, build_shard, check_tp,
                           copy_cache_from, launch_ranks, shard_kv, shard_layer, torchrun_rank)
from microbench.report.render import render_run
from microbench.report.tp_tables import allreduce_table, tp_sweep_table
from microbench.cli_tp import validate_tp
from microbench.bench.tp_sweep import tp1_skip_reason

TESTS = Path(__file__).resolve().parent
# GQA 2:1 (tiny), plain multi-head, GQA 4:1 with odd sizes; each splits over 2 ranks.
SHAPES = [
    PRESETS["tiny"],
    ModelShape("mha", n_layers=3, hidden=64, n_heads=4, n_kv_heads=4, head_dim=16, ffn=96,
               vocab=97),
    ModelShape("gqa4", n_layers=2, hidden=96, n_heads=8, n_kv_heads=2, head_dim=8, ffn=160,
               vocab=300),
]
# (case, shape, backend, rows): the torch references, and the triton backend at B = 5 rows
# (cuBLAS matmuls and the fused rope+KV store) and at one row (the skinny matmuls, whose O and
# down epilogues add the residual on the first rank only).
# The triton cases run the kernels under the interpreter on CPU tensors, which needs
# TRITON_INTERPRET=1 (conftest sets it where there is no GPU); on a GPU machine the triton
# backend's TP is checked by test_tp2_triton_logits_equal_unsharded instead.
_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
CASES = [(s.name, s, "torch", 5) for s in SHAPES] + (
    [("tiny-triton", PRESETS["tiny"], "triton", 5),
     ("tiny-triton-one-row", PRESETS["tiny"], "triton", 1)] if _INTERPRETER else [])
B, CTX, MAX_SEQ, STEPS = 5, 12, 32, 4
# float32 logits up to ~56 (ulp 3.8e-6): a rank's O and down projections sum half the products
# and the all-reduce adds the halves, an order the full matmul does not use, so the residual
# stream (and through it the K and V written to the cache) drifts by a few ulp per layer.
# Measured worst: 1.9e-5 on the logits (5 ulp), 1.4e-6 on the cache. 1e-4 is 5x that, and far
# below what a wrong head or column slice gives (O(1)).
ATOL = 1e-4


def _decoder_kw(backend="torch"):
    return dict(backend=backend, max_batch=B, max_seq=MAX_SEQ, dtype=torch.float32,
                device="cpu", seed=3)


def _inputs(vocab, step, seed=0, b=B):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (b,), generator=g)
    positions = torch.arange(CTX - b + 1, CTX + 1) - 1 + step    # ragged histories, growing
    slots = torch.randperm(B, generator=g)[:b]
    return tokens, positions, slots


# ---- CPU: two gloo ranks against the unsharded decoder --------------------------------------
def _equality_rank(rank, world, cases):
    """Runs in each spawned rank: the shard's logits and KV cache against the full decoder's
    over STEPS decode steps from a filled cache."""
    out = {}
    for name, shape, backend, rows in cases:
        kw = _decoder_kw(backend)
        full = ToyDecoder(shape, **kw)
        full.fill_cache(CTX)
        shard = build_shard(shape, world, rank, **kw)                   # from the seed
        sliced = build_shard(shape, world, rank, full=full, **kw)       # from `full`
        same = all(torch.equal(a[k], b[k]) for a, b in zip(shard.layers, sliced.layers) for k in a)
        copy_cache_from(shard, full, world, rank)
        bind_all_reduce(shard)
        worst, scale = 0.0, 0.0
        for step in range(STEPS if backend == "torch" else 2):   # the interpreter is slow
            t, p, s = _inputs(shape.vocab, step, seed=step, b=rows)
            want, got = full.step(t, p, s), shard.step(t, p, s)
            worst = max(worst, float((got - want).abs().max()))
            scale = max(scale, float(want.abs().max()))
        cache = max(float((mine - shard_kv(theirs, shape, world, rank)).abs().max())
                    for mine, theirs in zip(shard.k_cache + shard.v_cache,
                                            full.k_cache + full.v_cache))
        out[name] = dict(logit_diff=worst, scale=scale, cache_diff=cache, last=got,
                               same_weights=same)
    return out


@pytest.fixture(scope="module")
def gloo_ranks():
    return launch_ranks(_equality_rank, 2, args=(CASES,), backend="gloo")


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_sharded_logits_equal_unsharded(gloo_ranks, name):
    for rank, res in enumerate(gloo_ranks):
        r = res[name]
        assert r["scale"] > 1.0  # logits are not trivially small
        assert r["logit_diff"] <= ATOL, (rank, r["logit_diff"])
        # each rank's KV cache holds exactly its heads of the full cache after the steps
        assert r["cache_diff"] <= ATOL, (rank, r["cache_diff"])
        assert r["same_weights"]  # sliced from the seed or from a built model: the same
    # the LM head is replicated and its input all-reduced: every rank holds the same logits
    assert torch.equal(gloo_ranks[0][name]["last"], gloo_ranks[1][name]["last"])


def _sum_rank(rank, world):
    t = torch.tensor([rank + 1.0])
    torch.distributed.all_reduce(t)
    return dict(rank=rank, world=world, sum=t.item(),
                env={k: os.environ.get(k) for k in NO_MULTICAST})


def _failing_rank(rank, world):
    if rank == 1:
        raise ValueError("rank one fails on purpose")
    return rank


def test_a_failing_rank_is_one_line():
    with pytest.raises(RankFailed, match="rank 1 failed: ValueError: rank one fails on purpose"):
        launch_ranks(_failing_rank, 2, backend="gloo")


def test_torchrun_style_ranks(tmp_path):
    """Two processes started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)
    each run their own rank; multicast stays off in both."""
    from microbench.bench.tp import free_port
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]);"
            "from microbench.bench.tp import launch_ranks; from test_tp import _sum_rank;"
            "print(json.dumps(launch_ranks(_sum_rank, 2, backend='gloo')))")
    port = str(free_port())
    procs = []
    for r in range(2):
        env = {k: v for k, v in os.environ.items() if k not in NO_MULTICAST}
        env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(TESTS)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=TESTS.parent))
    outs = [p.communicate(timeout=60) for p in procs]
    for r, (p, (so, se)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, se
        res = json.loads(so.strip().splitlines()[-1])
        assert res[1 - r] is None
        assert res[r]["rank"] == r and res[r]["sum"] == 3.0
        assert res[r]["env"] == NO_MULTICAST


def test_torchrun_world_must_match_tp(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert torchrun_rank() == (0, 4, 0)
    with pytest.raises(ValueError, match=r"^--tp: 2, but torchrun started 4 ranks"):
        launch_ranks(_sum_rank, 2, backend="gloo")
    with pytest.raises(ValueError, match="--nproc-per-node 2"):
        validate_tp("tiny", 2, n_gpus=None)


# ---- sharding in one process ---------------------------------------------------------------
@pytest.mark.parametrize("shape, tp", [(PRESETS["tiny"], 2), (SHAPES[1], 4),
                                       (replace(SHAPES[2], n_kv_heads=4, name="gqa2"), 4)])
def test_shards_put_back_together_are_the_full_weights(shape, tp):
    full = ToyDecoder(shape, **_decoder_kw())
    L, s = full.layers[0], shape
    parts = [shard_layer(L, shape, tp, r) for r in range(tp)]
    sq, skv, f = s.q_size // tp, s.kv_size // tp, s.ffn // tp
    qkv = lambda a, b: torch.cat([p["wqkv"][a:b] for p in parts])
    assert torch.equal(qkv(0, sq), L["wqkv"][:s.q_size])                          # q heads
    assert torch.equal(qkv(sq, sq + skv), L["wqkv"][s.q_size:s.q_size + s.kv_size])
    assert torch.equal(qkv(sq + skv, sq + 2 * skv), L["wqkv"][s.q_size + s.kv_size:])
    assert torch.equal(torch.cat([p["wo"] for p in parts], 1), L["wo"])
    assert torch.equal(torch.cat([p["wgu"][:f] for p in parts]), L["wgu"][:s.ffn])   # gate
    assert torch.equal(torch.cat([p["wgu"][f:] for p in parts]), L["wgu"][s.ffn:])   # up
    assert torch.equal(torch.cat([p["wdown"] for p in parts], 1), L["wdown"])
    for p in parts:
        assert all(t.is_contiguous() for t in p.values())
        assert p["attn_norm"] is L["attn_norm"]                                   # replicated


def test_a_shard_owns_its_weights_and_shape():
    shape = PRESETS["tiny"]
    shard = build_shard(shape, 2, 1, **_decoder_kw())
    assert shard.shape == tp_shape(shape, 2)
    assert shard.shape.n_heads == 2 and shard.shape.n_kv_heads == 1 and shard.shape.ffn == 128
    assert shard.k_cache[0].shape == (B + 1, 1, MAX_SEQ, shape.head_dim)
    # slices are copies: no full-size storage hides behind a shard's weight
    w = shard.layers[0]["wo"]
    assert w.untyped_storage().nbytes() == w.numel() * w.element_size()


# ---- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("preset, tp, n_gpus, words", [
    ("llama-8b", 3, 8, "does not divide llama-8b's 32 attention heads; use one of 1, 2, 4, 8"),
    ("llama-8b", 16, 16, "does not divide llama-8b's 8 KV heads"),
    ("opt-125m", 8, 8, "opt-125m's 12 attention heads; use one of 1, 2, 3, 4, 6, 12"),
    ("tiny", 0, 8, "must be >= 1"),
    ("llama-1b", 4, 2, "4 ranks need 4 GPUs; 2 are present"),
    ("llama-1b", 2, 1, "2 ranks need 2 GPUs; 1 is present"),
    (None, 8, 4, "8 ranks need 8 GPUs"),
])
def test_bad_tp_is_one_line_naming_the_constraint(preset, tp, n_gpus, words):
    with pytest.raises(ValueError) as e:
        validate_tp(preset, tp, n_gpus=n_gpus)
    msg = str(e.value)
    assert msg.startswith("--tp: ") and words in msg and "\n" not in msg


def test_good_tp_passes_and_no_gpu_defers_to_the_gpu_check():
    validate_tp("llama-8b", 2, n_gpus=2)
    validate_tp("llama-8b", 8, n_gpus=None)  # no GPU: the command's require_cuda speaks
    check_tp(None, 2, 2)
    assert valid_tp(PRESETS["llama-8b"]) == [1, 2, 4, 8]
    assert tp_shape(PRESETS["llama-1b"], 1) is PRESETS["llama-1b"]


def test_tp1_fits_only_where_memory_allows():
    s = PRESETS["llama-8b"]
    # 15.0 GB of weights (tied LM head) and 2·32·129·8·576·128·2 = 9.7 GB of KV cache:
    # 1.25 x 24.7 GB = 28.8 GiB, + 2 GiB
    assert tp1_skip_reason(s, 128, 576, 2, 140 << 30) is None
    why = tp1_skip_reason(s, 128, 576, 2, 20 << 30)
    assert why == "TP 1 needs about 30.8 GiB on one GPU; 20.0 GiB free"


# ---- tables from saved runs ----------------------------------------------------------------
def _bench():
    pts = [dict(numel=n, bytes=2 * n, eager_us=20.0, graph_us=8.0 + n / 1e5, algbw=2 * n / 8e-6,
                busbw=2 * n / 8e-6) for n in (4096, 1 << 20)]
    return dict(world=2, k=20, dtype="bfloat16", points=pts, host_us=18.5,
                fit=dict(world=2, latency_us=8.0, bus_bw=2e11, host_us=18.5, source="t"))


def test_tables_from_saved_runs():
    row = dict(bs=1, padded_bs=1, eager_step_us=9000.0, graph_step_us=1500.0, speedup=6.0,
               predicted_speedup=5.0, allreduce_share_eager=0.21, allreduce_share_graph=0.12,
               predicted_allreduce_share_graph=0.1, tp1_eager_step_us=8000.0,
               tp1_graph_step_us=2100.0, tp_gain_graph=1.4, eager_step_us_max_rank=9090.0,
               max_abs_diff=0.0, speedup_error=-1 / 6)
    run = dict(kind="sweep-tp", config=dict(tp=2, preset="llama-8b", dtype="bfloat16",
                                            mode="full", ladder="vllm", context=512),
               env=dict(gpu="NVIDIA H200", nccl="2.27.3"), ladder=[1, 2, 4], rows=[row],
               capture_s_per_rank=[3.0, 3.1], pool_bytes_per_rank=[1 << 20, 1 << 20],
               tp1=dict(capture_s=2.0, sizes=3, pool_bytes=1 << 21), allreduce=_bench(),
               wall_s=60.0)
    text = render_run(json.loads(json.dumps(run)))
    assert text == tp_sweep_table(run)
    lines = text.splitlines()
    assert "llama-8b at TP 2" in lines[0] and "NCCL 2.27.3" in lines[0]
    body = lines[3].split()
    assert body[:5] == ["1", "1", "9000.0", "1500.0", "6.00"] and "21%" in body and "1.40" in body
    assert "capture per rank: 3.00 s, 3.10 s" in text and "200.0 GB/s" in text
    assert "slowest rank's eager median above rank 0's by at most 1.0%" in text
    assert "all-reduce:" not in lines[0] and "eager host time per step" not in text
    assert "~" not in text
    # a run saved before the TP sweep judged its rows: judged from them when shown
    assert "eager against graph, the graphs alone: held" in text
    # a row that missed its stopping rule, and the shape check the TP sweep now saves (shown
    # as saved, not judged again)
    unstable = dict(run, rows=[dict(row, stable=False, speedup_ci=[5.5, 6.5])],
                    shape_check=dict(held=False, why="speedup rises with batch size"))
    text = render_run(json.loads(json.dumps(unstable)))
    assert "6.00~" in text and "5.50-6.50" in text and "~: unstable row" in text
    assert "the graphs alone: NOT held: speedup rises with batch size" in text
    bench = allreduce_table(_bench())
    assert "fit (graph): 8.00 us + bus bytes / 200.0 GB/s" in bench and "18.5 us" in bench
    assert render_run(dict(kind="launch-tp", allreduce=_bench())) == bench
    # the path the all-reduces took, and each row's sampled host time with the in-place
    # all-reduce enqueue
    row.update(eager_host_us=4635.3, op_host_us={"all_reduce": 24.9})
    run["decoder"] = dict(all_reduce="NCCL direct")
    text = render_run(json.loads(json.dumps(run)))
    assert "| all-reduce: NCCL direct |" in text.splitlines()[0]
    assert "(one all-reduce's enqueue in place): bs 1 4635 us (24.9 us)" in text
    # with every rank's figure, the slowest rank's (the one the model priced)
    row.update(eager_host_us_per_rank=[4635.3, 5182.2], host_rank=1)
    assert "in place): bs 1 5182 us (24.9 us)" in render_run(json.loads(json.dumps(run)))
    # the benchmark of both paths: one table each, titled by its path
    paths = [dict(_bench(), path="NCCL direct"), dict(_bench(), path="torch.distributed")]
    both = render_run(dict(kind="launch-tp", allreduce=paths[0], allreduce_paths=paths))
    assert both.count("fit (graph)") == 2
    assert "(sum, bfloat16, NCCL direct)" in both and "(sum, bfloat16, torch.distributed)" in both
    # what `microbench launch --tp` prints is what `microbench show` prints
    from microbench.report.tp_tables import launch_tp_table
    assert launch_tp_table(dict(kind="launch-tp", allreduce=paths[0], allreduce_paths=paths)) == both


# ---- GPU: two CUDA GPUs, NCCL --------------------------------------------------------------
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
GPU_SIZES, GPU_MAX_B, GPU_CTX = [1, 2, 4, 8, 16], 24, 40


def _replay_rank(rank, world):
    """Each rank: its shard's graphs (with their all-reduces) against its eager twin, for every
    batch size 1..24 over the ladder 1..16 (above 16: eager fallback)."""
    import warnings

    from microbench.engine.runner import GraphRunner
    from microbench.bench.tp import warm_step
    dev = torch.device("cuda", torch.cuda.current_device())
    kw = dict(backend="triton", max_batch=GPU_MAX_B, max_seq=64, dtype=torch.bfloat16,
              device=dev, seed=0)
    import torch.distributed as dist

    from microbench.bench.nccl import DirectAllReduce
    # the graphs all-reduce through NCCL directly (as the TP sweep does), the eager reference
    # through torch.distributed: a two-way sum is the same bits either way
    direct = DirectAllReduce(rank, world, dist.new_group(backend="gloo"))
    dec = bind_all_reduce(build_shard(PRESETS["tiny"], world, rank, **kw), reduce=direct)
    ref = bind_all_reduce(build_shard(PRESETS["tiny"], world, rank, **kw))
    dec.fill_cache(GPU_CTX)
    ref.fill_cache(GPU_CTX)
    warm_step(dec)
    runner = GraphRunner(dec, GPU_SIZES, mode="full")
    runner.capture()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # above 16 falls back, by design
        for bs in range(1, GPU_MAX_B + 1):
            for ck, rk in zip(dec.k_cache + dec.v_cache, ref.k_cache + ref.v_cache):
                ck.copy_(rk)
            g = torch.Generator().manual_seed(bs)     # on the host: the same inputs on each rank
            t = torch.randint(PRESETS["tiny"].vocab, (bs,), generator=g).to(dev)
            p = torch.randint(1, GPU_CTX, (bs,), generator=g).to(dev)
            s = torch.randperm(bs, generator=g).to(dev)
            got, want = runner.step(t, p, s), ref.step(t, p, s)
            out.append(dict(bs=bs, padded=runner.dispatcher.pad(bs), equal=torch.equal(got, want),
                            diff=float((got.float() - want.float()).abs().max()),
                            cache_equal=all(torch.equal(ck[s], rk[s]) for ck, rk in
                                            zip(dec.k_cache + dec.v_cache,
                                                ref.k_cache + ref.v_cache))))
    counts = dict(runner.counts)
    runner.close()
    return dict(rows=out, counts=counts)


@pytest.mark.gpu
@two_gpus
def test_tp2_graph_replay_equals_eager_for_every_batch():
    res = launch_ranks(_replay_rank, 2)
    for r in res:
        for row in r["rows"]:
            if row["padded"] in (None, row["bs"]):
                # the same kernels on the same shapes, and a two-way sum is order-free: bitwise
                assert row["equal"] and row["cache_equal"], row
            else:
                # padded rows change the matmul and split shapes, hence rounding (as test_gpu)
                assert row["diff"] <= 0.1, row
        assert r["counts"]["replays"] == GPU_SIZES[-1]
        assert r["counts"]["fallbacks"] == GPU_MAX_B - GPU_SIZES[-1]


def _unsharded_rank(rank, world):
    """Each rank, triton backend in float32: its shard against the full decoder, at 1 row (the
    skinny matmuls with their fused prologues), 5 and 12 (cuBLAS), three steps each from a
    filled cache."""
    dev = torch.device("cuda", torch.cuda.current_device())
    import torch.distributed as dist

    from microbench.bench.nccl import DirectAllReduce
    kw = dict(backend="triton", max_batch=16, max_seq=64, dtype=torch.float32, device=dev, seed=0)
    out = {}
    direct = DirectAllReduce(rank, world, dist.new_group(backend="gloo"))
    for bs in (1, 5, 12):
        full = ToyDecoder(PRESETS["tiny"], **kw)
        full.fill_cache(GPU_CTX)
        # eager steps all-reducing through NCCL directly at 5 rows, through torch.distributed
        # at the others
        shard = bind_all_reduce(build_shard(PRESETS["tiny"], world, rank, **kw),
                                reduce=direct if bs == 5 else None)
        copy_cache_from(shard, full, world, rank)
        worst = scale = 0.0
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            t = torch.randint(PRESETS["tiny"].vocab, (bs,), generator=g).to(dev)
            p = (torch.randint(1, GPU_CTX, (bs,), generator=g) + step).to(dev)
            s = torch.randperm(bs, generator=g).to(dev)
            want, got = full.step(t, p, s), shard.step(t, p, s)
            worst = max(worst, float((got - want).abs().max()))
            scale = max(scale, float(want.abs().max()))
        out[bs] = (worst, scale)
    return out


@pytest.mark.gpu
@two_gpus
def test_tp2_triton_logits_equal_unsharded():
    for res in launch_ranks(_unsharded_rank, 2):
        for bs, (worst, scale) in res.items():
            # fp32 (no TF32 in matmuls), the tolerance test_gpu gives the backends: different
            # summation orders only; a wrong slice is off by O(scale)
            assert worst <= 1e-3 * (1 + scale), (bs, worst, scale)


@pytest.mark.gpu
@two_gpus
def test_tp_sweep_and_allreduce_bench_end_to_end(tmp_path):
    import functools

    from microbench.analysis.beside import TPRowModel, allreduce_fit
    from microbench.bench.sweep_config import SweepConfig
    from microbench.bench.tp import run_allreduce_bench
    from microbench.bench.tp_sweep import run_tp_sweep
    from microbench.cli_tp import FolderSaver
    from microbench.report.record import write_run
    cfg = SweepConfig(bs=(1, 3), preset="tiny", ladder="1,2,4", context=32, steps=2,
                      time_budget=0.05, out=str(tmp_path))
    run, where = run_tp_sweep(cfg, 2, progress=False, save=FolderSaver(tmp_path, "sweep", "tp2"),
                              fit=allreduce_fit, model=TPRowModel)
    saved = json.loads((Path(where) / "run.json").read_text())
    assert saved["kind"] == "sweep-tp" and len(saved["rows"]) == 2
    for r in saved["rows"]:
        assert r["padded_bs"] == (1 if r["bs"] == 1 else 4)
        assert r["graph_step_us"] > 0 and r["tp1_graph_step_us"] > 0
        assert 0 < r["allreduce_share_graph"] < 1 and r["predicted_graph_step_us"] > 0
        assert r["max_abs_diff"] <= 0.1
    assert len(saved["pool_bytes_per_rank"]) == 2 and saved["env"]["nccl_nvls_enable"] == "0"
    # judged as the one-GPU sweep judges, on the rows' intervals
    assert saved["shape_check"]["held"] in (True, False)
    assert len(saved["shape_check"]["intervals"]) == 2
    save = FolderSaver(tmp_path, "launch", "tp2",
                       write=functools.partial(write_run, csv_name="allreduce.csv"))
    run, where = run_allreduce_bench(2, time_budget=0.05, hidden=256, k=4, out=str(tmp_path),
                                     save=save, fit=allreduce_fit)
    assert run["kind"] == "launch-tp" and run["allreduce"]["fit"]["latency_us"] > 0
    # both paths timed, NCCL called directly first (the sweep's), then torch.distributed
    assert [b["path"] for b in run["allreduce_paths"]] == ["NCCL direct", "torch.distributed"]
    assert saved["decoder"]["all_reduce"] == "NCCL direct"
    assert all(r["op_host_us"]["all_reduce"] > 0 and len(r["eager_host_us_per_rank"]) == 2
               for r in saved["rows"])
    assert (Path(where) / "allreduce.csv").is_file()


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_tp_eager_arm_binds_where_the_decoder_binds(backend, monkeypatch):
    """The TP sweep's eager arm: a bound step on the triton backend, timed with the one-GPU
    sweep's eager timer (op host costs sampled beside each round); the plain step, timed
    alone, on the torch backend (which does not bind); both compute the plain step's logits."""
    from types import SimpleNamespace

    from microbench.bench.rows import Budget
    from microbench.bench.tp_sweep import step_arms
    dec = ToyDecoder(PRESETS["tiny"], **_decoder_kw(backend))
    dec.fill_cache(5)
    t, p, s = _inputs(dec.shape.vocab, 5)
    x = torch.stack([t, p, s])
    binds = []
    real_bind = ToyDecoder.bind
    monkeypatch.setattr(ToyDecoder, "bind", lambda self, bs: binds.append(bs) or real_bind(self, bs))
    costs: dict = {}
    arms = step_arms(dec, t.shape[0], x, None, SimpleNamespace(mode="none"), Budget(1, 0.01),
                     False, costs)
    assert list(arms) == ["eager"]
    assert binds == ([t.shape[0]] if backend == "triton" else [])
    assert (arms["eager"].time.beside is not None) == (backend == "triton")
    assert costs.get("kernels") == (len(dec.plan(t.shape[0], 0)) if backend == "triton" else None)
    torch.testing.assert_close(arms["eager"].step(), dec.step(t, p, s), atol=1e-6, rtol=1e-6)


def test_a_tp_row_takes_the_slowest_ranks_host_costs():
    """The ranks meet at every all-reduce, so the model prices a TP row's eager step with the
    host costs of the rank whose sampled step host time is longest; rows whose ranks sampled
    nothing (an unbound eager arm) keep what they had."""
    from microbench.bench.tp_sweep import slowest_host
    ranks = [dict(eager_host_us=4000.0, op_host_us={"all_reduce": 40.0}, piece_glue_us=1.0),
             dict(eager_host_us=4600.0, op_host_us={"all_reduce": 55.0}, piece_glue_us=2.0)]
    row = slowest_host(dict(bs=1, op_host_us={"all_reduce": 40.0}, piece_glue_us=1.0), ranks)
    assert row["host_rank"] == 1 and row["eager_host_us_per_rank"] == [4000.0, 4600.0]
    assert row["op_host_us"] == {"all_reduce": 55.0} and row["piece_glue_us"] == 2.0
    plain = slowest_host(dict(bs=1), [dict(eager_host_us=None)] * 2)
    assert plain == dict(bs=1)


def test_direct_all_reduce_calls_nccl_once_in_place_on_the_current_stream(monkeypatch):
    """bench.nccl.DirectAllReduce: one ncclAllReduce per call, in place (send = receive), the
    element count, NCCL's bfloat16 code, a sum; a non-contiguous tensor or an unsupported
    dtype is a one-line error, as is a library that does not load."""
    from types import SimpleNamespace

    from microbench.bench import nccl
    calls = []

    class FakeLib:
        def ncclAllReduce(self, *args):
            calls.append(args)
            return 0

    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: SimpleNamespace(cuda_stream=77))
    ar = object.__new__(nccl.DirectAllReduce)
    ar.lib, ar.comm, ar.world = FakeLib(), "comm", 2
    t = torch.ones(3, 5, dtype=torch.bfloat16)
    assert ar(t) is t
    assert calls == [(t.data_ptr(), t.data_ptr(), 15, 9, 0, "comm", 77)]
    with pytest.raises(ValueError, match="contiguous"):
        ar(t.t())
    with pytest.raises(ValueError, match="contiguous tensor of"):
        ar(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(OSError):
        nccl.load("libmicrobench-no-such-nccl.so")
    # a library that loads on rank 0 but not on rank 1: both ranks fall back, neither waits
    for got, why in launch_ranks(_load_split_rank, 2, backend="gloo"):
        assert got is None and why.startswith("libnccl.so.2 not loadable on rank 1 (gone")


def test_direct_all_reduce_closes_its_communicator_once(monkeypatch):
    """DirectAllReduce.close: ncclCommDestroy once, after the device's queued work; a second
    close does nothing and an all-reduce after it is a one-line error. close_all meets the
    other ranks at a barrier first, and with no direct path (None) only meets them."""
    from microbench.bench import nccl
    destroyed, synced, barriers = [], [], []

    class FakeLib:
        def ncclCommDestroy(self, comm):
            destroyed.append(comm)
            return 0

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: synced.append(1))
    monkeypatch.setattr(nccl.dist, "barrier", lambda group=None: barriers.append(group))
    ar = object.__new__(nccl.DirectAllReduce)
    ar.lib, ar.comm, ar.world = FakeLib(), "comm", 2
    nccl.close_all(ar, "host")
    ar.close()
    assert destroyed == ["comm"] and synced == [1] and barriers == ["host"]
    with pytest.raises(RuntimeError, match="communicator was closed"):
        ar(torch.ones(2, dtype=torch.bfloat16))
    nccl.close_all(None, "host")
    assert barriers == ["host", "host"] and destroyed == ["comm"]


def _one_rank_direct(rank, world):
    import torch.distributed as dist

    from microbench.bench import nccl
    host = dist.new_group(backend="gloo")
    ar = nccl.DirectAllReduce(rank, world, host)
    t = torch.arange(6, dtype=torch.bfloat16, device="cuda")
    same = bool(torch.equal(ar(t.clone()), t))          # a sum over one rank: unchanged
    nccl.close_all(ar, host)
    ar.close()                                          # a second close does nothing
    try:
        ar(t)
        after = "no error"
    except RuntimeError as e:
        after = str(e)
    return same, ar.comm, after


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_direct_all_reduce_makes_and_destroys_a_real_communicator():
    """On one GPU: NCCL's library, a one-rank communicator made and destroyed through the
    typed calls (ncclCommInitRank, ncclAllReduce, ncclCommDestroy)."""
    try:
        from microbench.bench import nccl
        nccl.load()
    except OSError:
        pytest.skip("libnccl.so.2 does not load here")
    ((same, comm, after),) = launch_ranks(_one_rank_direct, 1, backend="gloo")
    assert same and comm is None and "communicator was closed" in after


def _load_split_rank(rank, world):
    import torch.distributed as dist

    from microbench.bench import nccl

    def load(name=nccl.LIBRARY):
        if rank == 1:
            raise OSError("gone")
        return object()
    nccl.load = load
    return nccl.direct_all_reduce(rank, world, dist.new_group(backend="gloo"))


def test_the_tp_sweeps_kernel_lines_keep_each_ops_chain_alone(monkeypatch):
    """Rank 0 prices its shard's ops with kernel lines of each op's chain alone (mix=False): in
    a TP step an all-reduce sits between O or down and the op after it, which the one-GPU mix
    factor's pairs do not have. Every collective and the shard itself are stand-ins here."""
    from types import SimpleNamespace

    from microbench.bench import tp_sweep
    calls = []
    monkeypatch.setattr(tp_sweep, "build_shard", lambda *a, **k: SimpleNamespace(
        fill_cache=lambda context: None))
    monkeypatch.setattr(tp_sweep, "measure_ops", lambda *a, **k: {"rmsnorm": 1.0})
    monkeypatch.setattr(tp_sweep, "kernel_lines", lambda *a, **k: calls.append(k) or {})
    for name in ("free_device_memory", "bind_all_reduce", "warm_step"):
        monkeypatch.setattr(tp_sweep, name, lambda *a, **k: None)
    monkeypatch.setattr(tp_sweep.dist, "barrier", lambda *a, **k: None)
    rank = tp_sweep._Rank.__new__(tp_sweep._Rank)
    rank.cfg = SimpleNamespace(shape=PRESETS["tiny"], context=8, time_budget=0.1, preset="tiny")
    rank.world, rank.rank, rank.lead, rank.full, rank.host = 2, 0, True, None, None
    rank.dec_kw, rank.say, rank.dev = {}, lambda s: None, torch.device("cpu")
    rank.run = dict(launch=dict(replay_fit=dict(gpu_fixed_us=2.0)), decoder={})
    rank.build_shard()
    assert len(calls) == 1 and calls[0]["mix"] is False and calls[0]["replay_fixed_us"] == 2.0
    assert rank.run["launch"]["ops_host_us"] == {"rmsnorm": 1.0}


def test_the_tp_sweeps_decoder_settings_build_a_shard_on_cublas(monkeypatch):
    """The settings the TP sweep gives the TP-1 decoder and every shard reach the real
    build_shard, and both run cuBLAS above 16 rows, whatever the one-GPU table says."""
    from types import SimpleNamespace

    from microbench.bench.tp_sweep import decoder_kw
    from microbench.engine import blas
    monkeypatch.setattr(blas, "resolve", lambda b, *a: (lambda rows: b or "cublaslt"))
    cfg = SimpleNamespace(backend="triton", seed=0, shape=PRESETS["tiny"])
    kw = decoder_kw(cfg, 20, 16, torch.float32, torch.device("cpu"))
    shard = build_shard(PRESETS["tiny"], 2, 1, **kw)
    full = ToyDecoder(PRESETS["tiny"], **kw)
    assert shard.blas(32) == full.blas(32) == "cublas"
    assert ToyDecoder(PRESETS["tiny"], **dict(kw, blas=None)).blas(32) == "cublaslt"
    # and the fused attention's default split count, whatever the splits table says
    from microbench.engine import splits
    monkeypatch.setattr(splits, "resolve", lambda s, *a: (lambda batch: s or "half-tile"))
    shard = build_shard(PRESETS["tiny"], 2, 1, **kw)
    full = ToyDecoder(PRESETS["tiny"], **kw)
    assert shard.split_mode(16) == full.split_mode(16) == "fill"
    assert ToyDecoder(PRESETS["tiny"], **dict(kw, splits=None)).split_mode(16) == "half-tile"
