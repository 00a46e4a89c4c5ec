"""Where a tensor-parallel eager step's time goes: each rank's shard stepped eagerly with its
all-reduces made three ways, the arms interleaved in one process (fixed rounds, every rank in
the same order, a host barrier before each round):

    c10d   torch.distributed.all_reduce (a work object, NCCL on a side stream behind events)
    nccl   NCCL called straight on the current stream (bench.nccl.DirectAllReduce, as an
           engine's own NCCL wrapper calls it, and as the TP sweep makes them)
    none   no all-reduce (the logits are wrong; the time is the shard's kernels alone)

Per arm and batch size: the wall time of a synchronised step (what the sweep times) and the
host time to enqueue one step; `c10d - none` over the step's 2·L all-reduces is one all-reduce's
host cost in place. Rank 0 prints a table. On two GPUs:

    python3 scripts/tp_probe.py --preset llama-8b --bs 1,4,16
"""
from __future__ import annotations

import functools
import os
import statistics
import time

import click
import torch
import torch.distributed as dist

from microbench.bench.nccl import direct_all_reduce
from microbench.bench.sweep_config import max_seq_for
from microbench.bench.tp import bind_all_reduce, build_shard, launch_ranks, rank_device, warm_step
from microbench.bench.inputs import packed, step_inputs
from microbench.engine.shapes import PRESETS

ROUNDS, STEPS = 40, 3


def probe_rank(rank: int, world: int, preset: str, bss: list, context: int):
    dev = rank_device()
    host = dist.new_group(backend="gloo")
    shape = PRESETS[preset]
    shard = build_shard(shape, world, rank, max_batch=max(bss), max_seq=max_seq_for(context),
                        dtype=torch.bfloat16, device=dev)
    shard.fill_cache(context)
    bind_all_reduce(shard)
    warm_step(shard)
    arms = {"c10d": functools.partial(dist.all_reduce)}
    nccl_ar, why = direct_all_reduce(rank, world, host)
    if nccl_ar is not None:
        arms["nccl"] = nccl_ar
    arms["none"] = lambda h: None
    out = dict(skipped=why, env={k: v for k, v in os.environ.items() if k.startswith("TORCH_NCCL")},
               rows=[])
    gen = torch.Generator().manual_seed(1)
    for bs in bss:
        x = packed(*step_inputs(shape.vocab, bs, context, dev, gen, host_tokens=True))
        bound = {}
        for name, fn in arms.items():
            shard.all_reduce = fn
            bound[name] = shard.bind(bs)   # runs one step: every rank, same order
            bound[name].inputs.copy_(x)
        wall = {n: [] for n in arms}
        enq = {n: [] for n in arms}
        names = list(arms)
        for r in range(ROUNDS):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                dist.barrier(group=host)
                b = bound[n]
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                b.run()
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                enq[n].append((t1 - t0) * 1e6)
                t0 = time.perf_counter()
                for _ in range(STEPS):
                    b.run()
                    torch.cuda.synchronize()
                wall[n].append((time.perf_counter() - t0) * 1e6 / STEPS)
        for n in names:
            w, h = sorted(wall[n]), sorted(enq[n])
            q = lambda v, f: v[int(f * (len(v) - 1))]
            out["rows"].append(dict(bs=bs, arm=n, launches=len(bound[n]),
                                    wall_us=statistics.median(w), wall_p20=q(w, 0.2),
                                    wall_p80=q(w, 0.8), host_us=statistics.median(h),
                                    host_p20=q(h, 0.2), host_p80=q(h, 0.8)))
    return out if rank == 0 else None


@click.command()
@click.option("--preset", default="llama-8b")
@click.option("--bs", default="1,4,16")
@click.option("--context", default=512, type=int)
@click.option("--tp", default=2, type=int)
def main(preset, bs, context, tp):
    bss = [int(b) for b in bs.split(",")]
    res = launch_ranks(probe_rank, tp, args=(preset, bss, context))[0]
    print(f"{preset} TP {tp}, context {context}; TORCH_NCCL env: {res['env'] or 'none set'}")
    if res["skipped"]:
        print(f"arm nccl skipped: {res['skipped']}")
    print(f"{'bs':>3} {'arm':>5} {'launches':>8} {'wall us':>9} {'(p20-p80)':>17} "
          f"{'host us':>9} {'(p20-p80)':>17}")
    for r in res["rows"]:
        print(f"{r['bs']:>3} {r['arm']:>5} {r['launches']:>8} {r['wall_us']:>9.1f} "
              f"{r['wall_p20']:>8.1f}-{r['wall_p80']:<8.1f} {r['host_us']:>9.1f} "
              f"{r['host_p20']:>8.1f}-{r['host_p80']:<8.1f}")
    k = 2 * PRESETS[preset].n_layers
    for b in bss:
        by = {r["arm"]: r for r in res["rows"] if r["bs"] == b}
        for n in ("c10d", "nccl"):
            if n in by:
                print(f"bs {b}: {n} all-reduce in place, host us each: "
                      f"{(by[n]['host_us'] - by['none']['host_us']) / k:.2f}; "
                      f"wall us each: {(by[n]['wall_us'] - by['none']['wall_us']) / k:.2f}")


if __name__ == "__main__":
    main()
