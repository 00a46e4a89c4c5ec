"""Tensor parallelism: sharded decoders on torch.distributed, and CUDA graphs with all-reduces.

Megatron-style sharding of the toy decoder over `tp` ranks; rank r holds slice r of

    wqkv   [(H + 2Hkv) D, hidden]  by output rows (column-parallel): its H/tp query heads,
                                   then its Hkv/tp key heads, then the same value heads
    wo     [hidden, H D]           by input columns (row-parallel): its query heads' features
    wgu    [2F, hidden]            by output rows: cat(its F/tp gate rows, its F/tp up rows),
                                   since swiglu reads the first half as gate, the second as up
    wdown  [hidden, F]             by input columns: its F/tp FFN features

so a rank runs attention over its own heads (and its own slice of the KV cache, Hkv/tp heads
wide) and its own FFN columns, and the O and down projections leave partial sums that one
all-reduce each completes: the decoder's `all_reduce` hook, two per layer. The embedding, the
norms and the tied LM head are replicated: every rank computes the full logits.

A shard is a ToyDecoder of the sharded shape (`shapes.tp_shape`) whose weights are replaced by
slices of the full model's, generated from the same seed on the same kind of device, so a
rank's logits compare with the unsharded decoder's.

Ranks: `launch_ranks` spawns them from one command (torch.multiprocessing, a free TCP port on
127.0.0.1) or, under `torchrun --nproc-per-node N` (RANK and WORLD_SIZE set), runs this
process's rank. NCCL on CUDA, gloo on the CPU (tests); a second, gloo, group carries the host's
barriers and the gathering of results, so waiting ranks never spin a GPU kernel. NVLink
multicast stays off in every rank (NO_MULTICAST); no multicast or symmetric-memory API is used.
"""
from __future__ import annotations

import functools
import gc
import os
import pickle
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch

from microbench.engine.shapes import DTYPE_NAMES, ModelShape, torch_dtype, tp_shape
from microbench.bench.env import environment, require_cuda
from microbench.bench.inputs import step_inputs
from microbench.bench.nccl import close_all, direct_all_reduce

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                "NVSHMEM_DISABLE_NVLS": "1"}
# Rank 0 measures TP 1 alone while the others wait at a barrier: minutes for llama-8b.
TIMEOUT = timedelta(minutes=30)


def no_multicast():
    for k, v in NO_MULTICAST.items():
        os.environ.setdefault(k, v)


def check_tp(shape: ModelShape | None, tp: int, n_gpus: int | None = None):
    """ValueError (one line, naming the constraint) on a TP degree that does not divide the
    heads, KV heads and FFN of `shape`, or that needs more GPUs than the n_gpus present."""
    if shape is not None:
        tp_shape(shape, tp)
    elif tp < 1:
        raise ValueError(f"--tp: must be >= 1, got {tp}")
    if n_gpus is not None and tp > n_gpus:
        raise ValueError(f"--tp: {tp} ranks need {tp} GPUs; {n_gpus} "
                         f"{'is' if n_gpus == 1 else 'are'} present")


# ---- sharding ------------------------------------------------------------------------------
def _copy(t):
    # a fresh, contiguous tensor: a view would keep the full weight's storage alive
    return t.clone(memory_format=torch.contiguous_format)


def shard_layer(layer: dict, shape: ModelShape, tp: int, rank: int) -> dict:
    """Rank `rank`'s slices of one layer's weights (`shape` is the full model's)."""
    D, Fw = shape.head_dim, shape.ffn
    q_rows, kv_rows, f = shape.n_heads // tp * D, shape.n_kv_heads // tp * D, Fw // tp
    q0, k0, f0 = rank * q_rows, rank * kv_rows, rank * f
    qkv, gu = layer["wqkv"], layer["wgu"]
    k_at, v_at = shape.q_size + k0, shape.q_size + shape.kv_size + k0
    return dict(
        attn_norm=layer["attn_norm"], ffn_norm=layer["ffn_norm"],             # replicated
        wqkv=torch.cat([qkv[q0:q0 + q_rows], qkv[k_at:k_at + kv_rows],         # [(H+2Hkv)D/tp, h]
                        qkv[v_at:v_at + kv_rows]]),
        wo=_copy(layer["wo"][:, q0:q0 + q_rows]),                              # [h, HD/tp]
        wgu=torch.cat([gu[f0:f0 + f], gu[Fw + f0:Fw + f0 + f]]),               # [2F/tp, h]
        wdown=_copy(layer["wdown"][:, f0:f0 + f]),                             # [h, F/tp]
    )


def shard_kv(cache: torch.Tensor, shape: ModelShape, tp: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s KV heads of a full cache [slots, Hkv, max_seq, D] (a view)."""
    n = shape.n_kv_heads // tp
    return cache[:, rank * n:(rank + 1) * n]


def build_shard(shape: ModelShape, tp: int, rank: int, *, backend: str = "triton",
                max_batch: int = 64, max_seq: int = 1024, dtype=torch.bfloat16,
                device="cuda", seed: int = 0, full=None, pdl=None, blas: str = "cublas",
                splits: str = "fill"):
    """Rank `rank`'s ToyDecoder over `tp` ranks, its weights sliced from the full model built
    with `seed` (or from `full`, a full ToyDecoder already built). Without `full`, the full
    model is built with the smallest cache and freed layer by layer as it is sliced, so a rank
    never holds two full copies (llama-8b: 15 GB in bf16, a TP-2 shard 8 GB). pdl: the
    kernels' PDL mode; None takes the modes measured for the full model's shape, per batch size
    (a shard's shape is in no table), so a shard launches as its TP-1 model does. blas: the
    wide matmuls' interface (engine/blas.py), and splits the fused attention's
    (engine/splits.py); cuBLAS and the default splits unless told, a shard's shapes being in no
    table either."""
    from microbench.engine import pdl as pdl_modes
    from microbench.engine.decoder import ToyDecoder
    sshape = tp_shape(shape, tp)
    pdl = pdl_modes.resolve(pdl, shape, dtype, torch.device(device))
    own = full is None
    if own:
        full = ToyDecoder(shape, backend=backend, max_batch=1, max_seq=1, dtype=dtype,
                          device=device, seed=seed, pdl=pdl)
    layers = []
    for l in range(shape.n_layers):
        layers.append(shard_layer(full.layers[l], shape, tp, rank))
        if own:
            full.layers[l] = None
    embed, final_norm = full.embed, full.final_norm
    del full
    shard = ToyDecoder(sshape, backend=backend, max_batch=max_batch, max_seq=max_seq,
                       dtype=dtype, device=device, seed=seed, pdl=pdl, blas=blas, splits=splits)
    for mine, w in zip(shard.layers, layers):
        mine.update(w)  # the shard's own random weights are freed here
    shard.embed, shard.final_norm = embed, final_norm
    return shard


def copy_cache_from(shard, full, tp: int, rank: int):
    """Give the shard rank `rank`'s heads of the full decoder's KV cache (same slots, max_seq)."""
    for mine, theirs in zip(shard.k_cache + shard.v_cache, full.k_cache + full.v_cache):
        mine.copy_(shard_kv(theirs, full.shape, tp, rank))


def bind_all_reduce(dec, group=None, reduce=None):
    """Sum the row-parallel matmuls' partial outputs over `group`, in place: through `reduce`
    (a bench.nccl.DirectAllReduce over that group) when given, else torch.distributed. On the
    skinny path the residual add sits in those matmuls' epilogues: only the group's first rank
    adds it, so the sum holds it once."""
    import torch.distributed as dist
    dec.all_reduce = reduce or functools.partial(dist.all_reduce, group=group)
    dec.residual_owner = dist.get_rank(group) == 0
    return dec


# ---- ranks ---------------------------------------------------------------------------------
class RankFailed(RuntimeError):
    """A spawned rank raised or died; the message is its last line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun, else None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))
    return None


def launch_ranks(fn, world: int, args: tuple = (), backend: str = "nccl") -> list:
    """Run fn(rank, world, *args) on `world` ranks, each with the default process group up
    (and its CUDA device set, with NCCL); returns each rank's return value, by rank. Under
    torchrun only this process's rank runs: the other entries are None."""
    no_multicast()
    tr = torchrun_rank()
    if tr is not None:
        rank, size, local = tr
        if size != world:
            raise ValueError(f"--tp: {world}, but torchrun started {size} ranks "
                             f"(use --nproc-per-node {world})")
        out = [None] * world
        out[rank] = _rank_main(rank, world, local, fn, args, "env://", backend)
        return out
    import torch.multiprocessing as mp
    init = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="microbench-tp-") as d:
        try:
            mp.spawn(_spawned, args=(world, fn, args, init, backend, d), nprocs=world, join=True)
        except mp.ProcessRaisedException as e:
            last = [l for l in str(e).strip().splitlines() if l.strip()][-1]
            raise RankFailed(f"rank {e.error_index} failed: {last.strip()}") from None
        except mp.ProcessExitedException as e:
            raise RankFailed(f"rank {e.error_index} exited with code {e.exit_code}") from None
        return [pickle.loads((Path(d) / f"rank{r}.pkl").read_bytes()) for r in range(world)]


def _die_with_parent():
    """Linux: SIGTERM this rank when the process that spawned it dies (a timeout or Ctrl-C
    must not leave ranks holding GPUs, stuck in a collective)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawned(rank, world, fn, args, init, backend, out_dir):
    _die_with_parent()
    res = _rank_main(rank, world, rank, fn, args, init, backend)
    path = Path(out_dir) / f"rank{rank}.pkl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(res))
    os.replace(tmp, path)


def _rank_main(rank, world, local_rank, fn, args, init, backend):
    import torch.distributed as dist
    no_multicast()
    kw = dict(backend=backend, init_method=init, rank=rank, world_size=world, timeout=TIMEOUT)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        kw["device_id"] = torch.device("cuda", local_rank)  # communicator made now, eagerly
    dist.init_process_group(**kw)
    res = fn(rank, world, *args)
    # (not in a finally: after a failure a peer may still be inside a collective)
    dist.destroy_process_group()
    return res


def rank_device() -> torch.device:
    """This rank's device: the CUDA device _rank_main set, or the CPU (gloo)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def tp_environment(device, world: int) -> dict:
    """env.environment plus the TP facts: ranks, every rank's GPU, NCCL, multicast flags."""
    env = environment(device)
    cuda = torch.cuda.is_available()
    v = torch.cuda.nccl.version() if cuda else None
    env.update(tp=world, nccl=".".join(map(str, v)) if isinstance(v, tuple) else v,
               gpus=[torch.cuda.get_device_name(i) for i in range(world)] if cuda else [],
               **{k.lower(): os.environ.get(k) for k in NO_MULTICAST})
    return env


def printer(on: bool):
    """A progress printer to stderr, or one that says nothing."""
    return (lambda s: print(s, file=sys.stderr, flush=True)) if on else (lambda s: None)


def warm_step(dec):
    """One eager step on the scratch slot: the collectives' communicator and buffers exist
    before any capture starts."""
    dec.step(*step_inputs(dec.shape.vocab, 1, 0, dec.device, slot=dec.scratch_slot))
    torch.cuda.synchronize()


def decoder_plan(dec) -> dict:
    # the decoder's fusion plan, for plan.step_kernels, where the decoder has one
    return {"fusion": dec.fusion} if hasattr(dec, "fusion") else {}


def run_allreduce_bench(tp: int, time_budget: float = 0.3, hidden: int = 4096,
                        dtype: str = "bfloat16", k: int = 20, out: str = "runs",
                        progress: bool = True, save=None, fit=None):
    """The collective benchmark on `tp` GPUs (collectives.measure_allreduce at [B, hidden]
    sizes for B in 1..256 and at 1 to 64 MiB); returns (run, save(run)) on rank 0, save
    being a picklable callable that writes the run and returns its folder; fit
    (analysis.beside.allreduce_fit) fits the times."""
    check_tp(None, tp)
    require_cuda("launch")
    check_tp(None, tp, torch.cuda.device_count())
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype: {dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")
    res = launch_ranks(_bench_rank, tp, args=(hidden, dtype, k, time_budget, out, progress, save, fit))
    return res[0] if res[0] is not None else (None, None)


def _bench_rank(rank, world, hidden, dtype, k, budget, out, progress, save, fit):
    import torch.distributed as dist

    from microbench.bench.collectives import allreduce_numels, measure_allreduce
    dev = rank_device()
    host = dist.new_group(backend="gloo", timeout=TIMEOUT)
    dt = torch_dtype(dtype)
    elt = torch.finfo(dt).bits // 8
    # both paths in one process: NCCL called directly (the TP sweep's) where it loads, then
    # torch.distributed's
    direct, _ = direct_all_reduce(rank, world, host)
    benches = [measure_allreduce(allreduce_numels(hidden, elt), dt, dev, k, budget, host,
                                 say=printer(rank == 0 and progress), fit=fit, reduce=r)
               for r in ([direct] if direct is not None else []) + [None]]
    close_all(direct, host)
    if rank != 0:
        return None
    env = tp_environment(dev, world)
    run = dict(kind="launch-tp", config=dict(tp=world, hidden=hidden, dtype=dtype, k=k,
                                             time_budget=budget, out=out),
               env=env, allreduce=benches[0], rows=benches[0]["points"],
               allreduce_paths=benches)
    return run, (save(run) if save else None)


def free_device_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
