"""`microbench tune`: the skinny matmuls' launch configs chosen by measurement on this device.

For each matmul of each preset (the weight shape and its fusion: norm prologue, residual or
SwiGLU epilogue, as the decoder launches it) and each row bucket (1, 2, 4, 8, 16 rows), every
candidate config (kernels/gemv_configs.candidates) and cuBLAS (F.linear on the same weight) are
timed on the GPU alone: each candidate is captured REPS times back to back in a CUDA graph, the
calls cycling through copies of the weight (200 MB or more in all) so they stream from DRAM as a
step does, not from the L2. The fastest candidate is kept with its time, its share of the copy
bandwidth measured in the same run and cuBLAS's time, in the device's table
(kernels/configs/gemv_<device>.json), which the wrappers read when no config is passed.

Compiling the candidates is most of the cost (one Triton compile per K, fusion, row bucket and
config), so a pool of processes compiles them first into Triton's on-disk cache, from which the
timing process then loads them.
"""
from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import triton

from microbench.bench.timing import WeightCycle, stream_copies
from microbench.engine.pdl import MODES as PDL_MODES
from microbench.engine.splits import MODES as SPLIT_MODES
from microbench.engine.shapes import PRESETS, ModelShape, max_seq_for
from microbench.kernels import gemv_configs

# what a candidate tile may raise on a device it does not fit (shared memory, registers): the
# tile is skipped; anything else is an error and stops the run
TILE_ERRORS = (triton.runtime.errors.OutOfResources, triton.compiler.errors.CompilationError)

REPS = 20


@dataclass(frozen=True)
class Matmul:
    """One matmul of a decode step as the skinny kernel runs it."""
    model: str
    name: str
    n: int          # rows of the weight (2F for gate/up)
    k: int
    norm: bool
    epi: int        # 0 none, 1 residual, 2 swiglu

    def key(self, elt: int) -> str:
        return gemv_configs.shape_key(self.n, self.k, self.norm, self.epi, elt)


def matmuls(shape: ModelShape) -> list[Matmul]:
    """The step's matmuls with the fusion each carries on the skinny path (engine/decoder.py)."""
    s, m = shape, shape.name
    return [Matmul(m, "qkv_proj", s.qkv_size, s.hidden, True, 0),
            Matmul(m, "o_proj", s.hidden, s.q_size, False, 1),
            Matmul(m, "gate_up_proj", 2 * s.ffn, s.hidden, True, 2),
            Matmul(m, "down_proj", s.hidden, s.ffn, False, 1),
            Matmul(m, "lm_head", s.vocab, s.hidden, True, 0)]


def jobs(presets, buckets, elt: int = 2) -> list[tuple[Matmul, int, dict]]:
    """(matmul, rows, config) for every candidate of every distinct matmul and bucket."""
    seen, out = set(), []
    for p in presets:
        for mm in matmuls(PRESETS[p]):
            if mm.key(elt) in seen:
                continue
            seen.add(mm.key(elt))
            for rows in buckets:
                out += [(mm, rows, c) for c in gemv_configs.candidates(mm.k, rows, elt)]
    return out


def best(timed: dict) -> tuple[dict, float]:
    """The fastest config of {config as JSON: us}, and its time."""
    cfg = min(timed, key=timed.get)
    return json.loads(cfg), timed[cfg]


def entry(cfg: dict, us: float, cublas_us: float, nbytes: int, copy_bps: float, mm: Matmul) -> dict:
    """A table entry: the config and what it measured."""
    return dict(cfg, us=us, cublas_us=cublas_us, frac_of_copy=nbytes / (us * 1e-6) / copy_bps,
                matmul=f"{mm.model} {mm.name}")


def chosen_by_steps(configs: dict, entries: dict) -> list:
    """The (shape key, bucket) pairs of `entries` whose entry in `configs` carries `chosen_by`:
    set by hand after a whole-step A/B chose it over the tile `tune` times fastest alone, which
    a tune, timing each matmul alone, cannot judge."""
    return [(key, b) for key, buckets in entries.items() for b in buckets
            if "chosen_by" in configs.get(key, {}).get(b, {})]


def merge_table(path: Path, meta: dict, entries: dict) -> dict:
    """The table at `path` with `entries` ({shape key: {bucket: entry}}) written over its own,
    except those chosen by whole steps (chosen_by_steps: kept; drop an entry's `chosen_by` to
    let a tune replace it), and `meta` (device, versions, command) recorded for the run."""
    old = json.loads(path.read_text()) if path.exists() else {}
    configs = old.get("configs", {})
    keep = set(chosen_by_steps(configs, entries))
    for key, buckets in entries.items():
        configs.setdefault(key, {}).update({b: e for b, e in buckets.items() if (key, b) not in keep})
    runs = old.get("runs", []) + [meta]
    return dict(device=meta["device"], runs=runs, configs=dict(sorted(configs.items())))


# ---- GPU ------------------------------------------------------------------------------------
def _case(mm: Matmul, rows: int, copies: int):
    """Inputs for `mm` at `rows` rows: the rows, norm weight, residual and `copies` weights."""
    import torch
    r = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    ws = [r(mm.n, mm.k) * mm.k ** -0.5 for _ in range(copies)]
    return r(rows, mm.k), 1 + 0.1 * r(mm.k), r(rows, mm.n), ws


def _call(mm: Matmul, x, nw, res, w, cfg):
    from microbench import kernels as K
    if mm.epi == 2:
        return lambda: K.rmsnorm_linear_swiglu(x, nw, 1e-5, w(), config=cfg)
    if mm.norm:
        return lambda: K.rmsnorm_linear(x, nw, 1e-5, w(), config=cfg)
    return lambda: K.linear(x, w(), residual=res, config=cfg)


def _compile(batch):
    """Worker: compile each (matmul, rows, config) by running it once (fills Triton's cache)."""
    import torch
    for mm, rows, cfg in batch:
        x, nw, res, ws = _case(mm, rows, 1)
        try:
            _call(mm, x, nw, res, lambda: ws[0], cfg)()
        except TILE_ERRORS:   # the timing process skips the tile too
            pass
    torch.cuda.synchronize()
    return len(batch)


def precompile(all_jobs, workers: int, on_progress=None) -> None:
    if workers <= 1:
        _compile(all_jobs)
        return
    batches = [all_jobs[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        done = 0
        for n in pool.map(_compile, batches):
            done += n
            if on_progress:
                on_progress(f"compiled {done}/{len(all_jobs)} candidates")


def _time_us(fn, calls: int, budget_s: float) -> float:
    """GPU time of one call: a graph of `calls` back-to-back calls, replayed."""
    from microbench.bench.timing import gpu_time_us, graph_of
    g = graph_of(fn, calls)
    us = gpu_time_us(g.replay, inner=3, budget_s=budget_s).median / calls
    del g
    return us


def tune_matmul(mm: Matmul, rows: int, cands, copy_bps: float, budget_s: float) -> dict | None:
    """Time every candidate and cuBLAS for `mm` at `rows` rows; the winner's table entry, or
    None when no candidate ran. Each graph makes one call per weight copy (REPS at least), so
    the calls stream every copy, 200 MB or more, from DRAM. cuBLAS is timed unfused (F.linear
    alone, without the norm, residual or SwiGLU the skinny kernel carries)."""
    import torch.nn.functional as F
    elt = 2
    copies = stream_copies(mm.n * mm.k * elt)
    calls = max(REPS, copies)
    x, nw, res, ws = _case(mm, rows, copies)
    w = WeightCycle(ws).next
    timed = {}
    for c in cands:
        try:
            timed[json.dumps(c, sort_keys=True)] = _time_us(_call(mm, x, nw, res, w, c), calls,
                                                            budget_s)
        except TILE_ERRORS:
            continue
    if not timed:
        return None
    cublas = _time_us(lambda: F.linear(x, w()), calls, budget_s)
    cfg, us = best(timed)
    n_out = mm.n // 2 if mm.epi == 2 else mm.n
    nbytes = (mm.n * mm.k + rows * mm.k + rows * n_out) * elt
    return entry(cfg, us, cublas, nbytes, copy_bps, mm)


def run_tune(presets, buckets=gemv_configs.ROW_BUCKETS, budget_s: float = 0.05,
             workers: int | None = None, on_progress=None) -> dict:
    """Tune every matmul of `presets` at `buckets` rows; returns {meta, entries}."""
    import torch

    from microbench.bench.device import copy_bandwidth
    from microbench.bench.env import environment
    all_jobs = jobs(presets, buckets)
    workers = workers or max(1, min(16, (os.cpu_count() or 2) - 2))
    precompile(all_jobs, workers, on_progress)
    copy = copy_bandwidth(torch.device("cuda"), budget_s=0.5)
    entries: dict = {}
    groups: dict = {}
    for mm, rows, cfg in all_jobs:
        groups.setdefault((mm, rows), []).append(cfg)
    for n, ((mm, rows), cands) in enumerate(groups.items(), 1):
        e = tune_matmul(mm, rows, cands, copy["bytes_per_s"], budget_s)
        if e is None:
            if on_progress:
                on_progress(f"{n}/{len(groups)} {mm.model} {mm.name} rows {rows}: no candidate "
                            f"fits this device; the rule stays")
            continue
        entries.setdefault(mm.key(2), {})[str(rows)] = e
        if on_progress:
            on_progress(f"{n}/{len(groups)} {mm.model} {mm.name} rows {rows}: {e['us']:.1f} us "
                        f"({e['frac_of_copy']:.0%} of copy), cuBLAS unfused {e['cublas_us']:.1f} us")
    env = environment(torch.device("cuda"))
    meta = dict(device=torch.cuda.get_device_name(), presets=list(presets), buckets=list(buckets),
                copy_bytes_per_s=copy["bytes_per_s"], reps_per_graph=REPS,
                **{k: env.get(k) for k in ("date", "command", "torch", "triton", "git")})
    return dict(meta=meta, entries=entries)


# ---- decoders' whole graphed steps, interleaved in one process ------------------------------
# What `tune --ab` can vary: the arms' names and the decoder settings each is built with. The
# first arm is the one every other arm's ratio is taken against: the default decoder, except
# for pdl, blas and splits, whose arms are the modes (engine/pdl.py, engine/blas.py,
# engine/splits.py), each asked for explicitly.
VARIANTS = {
    "table": (("tuned", {}), ("rule", {"table": False})),
    "pdl": tuple((f"pdl-{name}", {"pdl": pdl}) for name, pdl in PDL_MODES.items()),
    # the fused arms pin the fused attention's default split rule: the splits table may run a
    # batch size's attention as separate kernels, which would make the two arms alike
    "plan": (("fused", {"splits": "fill"}), ("unfused", {"fusion": "UNFUSED"})),
    "attention": (("fused-attention", {"splits": "fill"}),
                  ("separate-attention", {"fusion": "MATMULS"})),
    "blas": (("cublas", {"blas": "cublas"}), ("cublaslt", {"blas": "cublaslt"})),
    "splits": tuple((mode, {"splits": mode}) for mode in SPLIT_MODES),
    # the device's table against the one at $MICROBENCH_AB_TABLE (a copy taken before a re-tune)
    "previous-table": (("tuned", {}), ("previous", {"table_file": "MICROBENCH_AB_TABLE"})),
}


def ab_max_seq(context: int) -> int:
    """The cache length of the decoders `tune --ab` times: the sweep's at that context, so the
    attention launches a splits entry records are those the sweep's decoder makes (the split
    rule counts the cache's tiles)."""
    return max_seq_for(context)


def _graphed_step(preset: str, bs: int, context: int, table: bool = True,
                  table_file: str | None = None, **dec_kw):
    """A GraphRunner with `bs` captured for `preset`, built with decoder settings `dec_kw`, its
    skinny matmuls bound with the tuned table's configs (table) or the rule's (the table hidden
    while the step is bound), or with the table at the path in environment variable
    `table_file`."""
    import torch

    from microbench.bench.inputs import step_inputs
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.plan import Fusion
    from microbench.engine.runner import GraphRunner
    if "fusion" in dec_kw:
        dec_kw["fusion"] = Fusion[dec_kw["fusion"]]
    if table_file is not None:   # the name of the variable that holds the table's path
        swap = gemv_configs.table_from(os.environ[table_file])
    else:
        swap = contextlib.nullcontext() if table else gemv_configs.tables_off()
    with swap:
        dec = ToyDecoder(PRESETS[preset], max_batch=bs, max_seq=ab_max_seq(context), device="cuda",
                         **dec_kw)
        runner = GraphRunner(dec, [bs], mode="full")
        runner.capture()
    t, p, s = step_inputs(dec.shape.vocab, bs, context, "cuda", torch.Generator("cuda").manual_seed(0))
    runner.step(t, p, s)
    torch.cuda.synchronize()
    return runner, lambda: runner.step(t, p, s)


def step_ab(preset: str, bs: int = 1, vary: str = "table", context: int = 512, rounds: int = 40,
            steps: int = 10) -> dict:
    """Graph steps of decoders that differ as VARIANTS[vary] says, in one process: the arms take
    turns, the order rotated every round and reversed every other one (AB, BA; ABC, CBA, BCA,
    ACB, CAB, BAC), so each arm runs in each position equally often over rounds that are a
    multiple of 2·arms; each sample `steps` back-to-back replays timed with CUDA events. The
    result: `arms` (their names, first the reference), `elt` (the decoders' element size), each
    arm's median step (us) with its 95% interval, and `ratios`: for every other arm, the median
    of paired ratios (first arm / that arm) with its 95% bootstrap interval."""
    import torch

    from microbench.stats import median_ci, paired_ratio
    names = [name for name, _ in VARIANTS[vary]]
    # every arm's decoder and graph stay in memory while the arms take turns
    arms = {name: _graphed_step(preset, bs, context, **dict(kw)) for name, kw in VARIANTS[vary]}
    elt = arms[names[0]][0].decoder.embed.element_size()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = {name: [] for name in names}
    for i in range(rounds):
        turn = i // 2 % len(names)
        order = names[turn:] + names[:turn]
        for name in (order if i % 2 == 0 else order[::-1]):
            step = arms[name][1]
            start.record()
            for _ in range(steps):
                step()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) * 1e3 / steps)
    for runner, _ in arms.values():
        runner.close()
    out = {name: dict(zip(("median", "lo", "hi"), median_ci(xs))) for name, xs in samples.items()}
    ratios = {name: paired_ratio(samples[names[0]], samples[name]) for name in names[1:]}
    return dict(preset=preset, bs=bs, vary=vary, arms=names, elt=elt, context=context,
                rounds=rounds, steps=steps, **out, ratios=ratios)


# Two arms that launch the same kernels (a split A/B at a batch where both rules give one count)
# still differ by up to about 1% in one process, with tight intervals: each decoder's weights,
# cache and graph sit at their own addresses. So an arm must beat the reference by more than
# that to be kept (docs/bandwidth.md, "Attention's split count").
AB_FLOOR = 0.01


def fastest(result: dict) -> str:
    """The arm of a step_ab result to keep: among the arms faster than the reference (the
    first) beyond noise and the A/B's floor (their ratio's 95% interval wholly above
    1 + AB_FLOOR), the one with the smallest median step; the reference when none is."""
    faster = [name for name, q in result["ratios"].items() if q["ci"][0] > 1.0 + AB_FLOOR]
    if not faster:
        return result["arms"][0]
    return min(faster, key=lambda name: result[name]["median"])
