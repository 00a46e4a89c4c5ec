"""The TP sweep, as one rank runs it: eager against graph step time per batch size with every
rank's graphs holding their all-reduces, beside TP 1 on the same preset.

On each rank, in order (ranks meet at host barriers between the phases):

1. rank 0 alone: launch costs, copy bandwidth and matrix rate (the model's device profile);
   then, where it fits in rank 0's free memory, the full model at TP 1: build, capture the
   same ladder, time the same batches (the others wait at a barrier on the host);
2. every rank: its shard (tp.build_shard, sliced from rank 0's TP-1 model there), the KV cache
   filled to the context (rank 0 then times the shard's op host costs and kernel lines), the
   all-reduce bound (NCCL called directly, bench.nccl, where it loads), one eager step, then its
   own graphs captured into its own pool by a GraphRunner (whose warm-up steps all-reduce too);
3. the all-reduces alone (collectives.measure_allreduce) at this sweep's message sizes, [bs,
   hidden] and [padded bs, hidden], with k = 2 · layers collectives per sample, plus three
   bandwidth-bound sizes for the fit the model uses;
4. per batch size: eager and graph step time (decode-loop latency, synchronised after every
   step as the single-GPU sweep is), every rank taking the same number of samples and sampling
   its op host costs beside them at the same points.

The all-reduce share of a step is measured apart, not profiled out of it: eager, 2·L
collectives at [bs, hidden] issued back to back and timed to a device-wide synchronise, over
the eager step; in the graph, the replay of a graph of 2·L collectives at [padded bs, hidden],
over the graph step. Times are rank 0's; `*_max_rank` fields hold the slowest rank's median, and
the host costs a row keeps are its slowest-host rank's (`host_rank`).
"""
from __future__ import annotations

import time
import torch
import torch.distributed as dist

from microbench.bench.collectives import BIG_BYTES, gather, lockstep, measure_allreduce, point_at
from microbench.bench.env import require_cuda
from microbench.bench.hostcpu import on_quick_cpu, pin_factory, rank_share
from microbench.bench.inputs import packed, step_inputs
from microbench.bench.launch import measure_launch
from microbench.bench.nccl import close_all, direct_all_reduce
from microbench.bench.ops import kernel_lines, measure_ops
from microbench.bench.rows import Arm, Budget, eager_timer, host_fields, measure_row, wall_timer
from microbench.bench.sweep_config import max_seq_for
from microbench.bench.tp import (TIMEOUT, bind_all_reduce, build_shard, check_tp, decoder_plan,
                                 free_device_memory, launch_ranks, printer, rank_device,
                                 tp_environment, warm_step)
from microbench.engine import pdl as pdl_modes
from microbench.engine.decoder import ToyDecoder
from microbench.engine.runner import GraphRunner
from microbench.engine.shapes import torch_dtype, tp_shape
from microbench.kernels.gemv import use_pdl
from microbench.stats import check_shape

GIB = 1 << 30


def tp1_skip_reason(shape, max_batch: int, max_seq: int, elt: int, free_bytes: int) -> str | None:
    """Why the full model does not fit one GPU for the TP-1 comparison, or None if it does:
    weights and KV cache, plus a quarter for activations and graphs and 2 GiB of headroom."""
    kv = 2 * shape.n_layers * (max_batch + 1) * shape.n_kv_heads * max_seq * shape.head_dim * elt
    need = int(1.25 * (shape.n_params * elt + kv)) + 2 * GIB
    if need > free_bytes:
        return (f"TP 1 needs about {need / GIB:.1f} GiB on one GPU; "
                f"{free_bytes / GIB:.1f} GiB free")
    return None


def step_arms(dec, bs: int, x, graph, cfg, budget: Budget, check: bool, host_costs: dict) -> dict:
    """The eager arm and, unless --mode none, the graph arm (checked against eager's logits
    with `check`) of a row at bs on packed inputs x ([3, bs]). Eager runs the decoder's bound
    step where it binds (the triton backend; a shard's all-reduces bound in place), as the
    one-GPU sweep's eager arm, with rows.eager_timer: before each round it samples the plan's
    op host costs (a shard's all-reduces among them), the glue and one step's host time into
    `host_costs`. Every rank samples at the same point of the same rotation, so the sampled
    collectives pair up. Else the plain step, timed alone (twice the budget: the host is the
    noisier side)."""
    if dec.backend == "triton":
        bound = dec.bind(bs)   # binding runs one step: on a shard, a collective of every rank
        host_costs["kernels"] = len(bound)
        arms = {"eager": Arm(lambda: bound.step_packed(x),
                             eager_timer(dec, bs, budget, host_costs, bound))}
    else:
        arms = {"eager": Arm(lambda: dec.step(x[0], x[1], x[2]),
                             wall_timer("eager_", budget, scale=2))}
    if cfg.mode != "none":
        arms["graph"] = Arm(graph, wall_timer("graph_", budget),
                            diff="max_abs_diff" if check else None)
    return arms


def single_gpu_steps(dec, ladder, cfg, say) -> dict:
    """TP 1 on this GPU alone: capture the ladder, time eager and graph steps per batch."""
    runner = GraphRunner(dec, ladder, mode=cfg.mode)
    try:
        cap = runner.capture()
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        rows = []
        for bs in cfg.bs:
            # tokens drawn on the host: every rank gets the same ones
            t, p, s = step_inputs(dec.shape.vocab, bs, cfg.context, dec.device, gen, host_tokens=True)
            padded = runner.dispatcher.pad(bs) if cfg.mode != "none" else None
            x = packed(t, p, s)
            host_costs: dict = {}
            arms = step_arms(dec, bs, x, lambda: runner.step_packed(x), cfg,
                             Budget(cfg.steps, cfg.time_budget, pin=pin_factory(cfg.pin_cpu)),
                             False, host_costs)
            row = host_fields(measure_row(arms, bs, padded, "eager" if padded is None else cfg.mode,
                                          lambda m: say(f"TP 1, {m}")), host_costs,
                              host_costs.get("kernels"))
            row.update(attn_launches=dec.attention_launches(bs),
                       padded_attn_launches=dec.attention_launches(padded or bs))
            rows.append(row)
        return dict(capture_s=cap["capture_s"], pool_bytes=cap["pool_bytes"],
                    sizes=len(cap["sizes"]), rows=rows, plan=decoder_plan(dec))
    finally:
        runner.close()


def sweep_rank(rank: int, world: int, cfg, compare_tp1: bool, progress: bool, save=None,
               fit=None, model=None):
    """One rank's part of the TP sweep; rank 0 returns (run, where save(run) last saved it),
    the others None. fit and model: see run_tp_sweep."""
    r = _Rank(rank, world, cfg, progress, save, fit, model)
    if r.lead:
        r.lead_alone(compare_tp1)
    dist.barrier(group=r.host)
    r.build_shard()
    runner = GraphRunner(r.shard, r.ladder, mode=cfg.mode)
    stopped = False
    try:
        r.capture(runner)
        r.time_rows(runner)
    except KeyboardInterrupt:
        if not r.lead:
            raise
        r.run["interrupted"] = stopped = True
    finally:
        runner.close()
    out = None
    if r.lead:   # saved before the teardown, so a peer lost at its barrier costs no run
        r.run["wall_s"] = time.perf_counter() - r.t_start
        out = r.run, r.save(r.run)
    if not stopped:   # (after Ctrl-C the other ranks are gone: no barrier to meet them at)
        close_all(r.reduce, r.host)   # no graph holds it now; every rank is past its collectives
    return out


def decoder_kw(cfg, max_batch: int, max_seq: int, dtype, dev) -> dict:
    """The TP-1 decoder's and every shard's settings (bench.tp.build_shard): the PDL modes
    measured for the full shape, per batch size, cuBLAS above 16 rows and the default attention
    splits (a shard's shapes are in no BLAS or splits table)."""
    return dict(backend=cfg.backend, max_batch=max_batch, max_seq=max_seq, dtype=dtype,
                device=dev, seed=cfg.seed, pdl=pdl_modes.resolve(None, cfg.shape, dtype, dev),
                blas="cublas", splits="fill")


class _Rank:
    """One rank's sweep: its device, host group, decoder settings and (on rank 0) the run;
    the methods are the phases of the module docstring, in order."""

    def __init__(self, rank: int, world: int, cfg, progress: bool, save=None, fit=None,
                 model=None):
        self.t_start = time.perf_counter()
        self.rank, self.world, self.cfg = rank, world, cfg
        self.lead = rank == 0
        self.say = printer(self.lead and progress)
        self.dev = dev = rank_device()
        self.host = dist.new_group(backend="gloo", timeout=TIMEOUT)
        self.dtype = dtype = torch_dtype(cfg.dtype)
        self.elt = torch.finfo(dtype).bits // 8
        self.ladder = cfg.ladder_sizes() if cfg.mode != "none" else []
        self.max_batch = max(max(cfg.bs), max(self.ladder, default=1))
        self.max_seq = max_seq_for(cfg.context)
        self.dec_kw = decoder_kw(cfg, self.max_batch, self.max_seq, dtype, dev)
        self.save = save or (lambda run: None)
        self.fit, self.model = fit, model
        self.run = self.full = None
        self.tp1 = {}

    def lead_alone(self, compare_tp1: bool):
        """Rank 0 alone: the device profile, then TP 1 where it fits (the others wait)."""
        cfg, shape, dev, say = self.cfg, self.cfg.shape, self.dev, self.say
        env = tp_environment(dev, self.world)
        on_dev = torch.empty(1, device=dev)   # what use_pdl asks the device's PDL support of
        self.run = run = dict(kind="sweep-tp", config=dict(cfg.to_dict(), tp=self.world,
                                                           compare_tp1=compare_tp1),
                              env=env, ladder=self.ladder, shape=shape.to_dict(),
                              shard_shape=tp_shape(shape, self.world).to_dict(), rows=[],
                              interrupted=False,
                              decoder=dict(pdl_rows=pdl_modes.modes_at(
                                  self.dec_kw["pdl"], set(cfg.bs) | set(self.ladder),
                                  lambda arg: use_pdl(on_dev, arg))))
        say("rank 0 alone: launch costs, copy bandwidth, matrix rate")
        with on_quick_cpu(cfg.pin_cpu):
            run["launch"] = measure_launch(dev, budget_s=min(cfg.time_budget, 0.5))
        why = "not asked" if not compare_tp1 else tp1_skip_reason(
            shape, self.max_batch, self.max_seq, self.elt, torch.cuda.mem_get_info(dev)[0])
        if why is None:
            say(f"rank 0 alone: {cfg.preset} at TP 1")
            self.full = ToyDecoder(shape, **self.dec_kw)
            self.full.fill_cache(cfg.context)
            self.tp1 = single_gpu_steps(self.full, self.ladder, cfg, say)
            run["tp1"] = {k: v for k, v in self.tp1.items() if k != "rows"}
        else:
            run["tp1"] = dict(skipped=why)
        self.save(run)

    def build_shard(self):
        """Every rank: its shard, the KV cache filled, one eager step (the communicator up)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.say(f"every rank: its shard of {cfg.preset} ({self.world} ranks)")
        self.shard = shard = build_shard(cfg.shape, self.world, self.rank, full=self.full,
                                         **self.dec_kw)
        self.full = None
        free_device_memory()
        shard.fill_cache(cfg.context)
        if self.lead:  # the model's per-op inputs, on the shard alone (no collective yet)
            launch = self.run["launch"]
            launch["ops_host_us"] = measure_ops(shard, 1, budget_s=min(cfg.time_budget, 0.3))
            self.say("rank 0: the shard's kernels timed inside graphs (the model's lines)")
            # each op's chain alone: in the TP step an all-reduce sits between O or down and
            # the op after it, which the one-GPU mix factor's pairs do not have
            launch["kernel_lines"] = kernel_lines(
                shard, cfg.context, budget_s=min(cfg.time_budget, 0.1),
                replay_fixed_us=max(0.0, launch["replay_fit"]["gpu_fixed_us"]), mix=False)
        # the all-reduces go through NCCL directly where it loads, as an engine makes them
        self.reduce, why = (direct_all_reduce(self.rank, self.world, self.host)
                            if self.dev.type == "cuda" else (None, "CPU ranks: gloo"))
        if self.lead:
            self.run["decoder"]["all_reduce"] = ("NCCL direct" if self.reduce is not None
                                                 else f"torch.distributed ({why})")
        bind_all_reduce(shard, reduce=self.reduce)
        warm_step(shard)
        dist.barrier(group=self.host)
        self.build_s = time.perf_counter() - t0

    def capture(self, runner):
        """Every rank's graphs (the same sizes on every rank), then the all-reduces alone."""
        cfg, shape, elt = self.cfg, self.cfg.shape, self.elt
        cap = runner.capture()
        self.say(f"captured {len(cap['sizes'])} sizes in {cap['capture_s']:.1f} s, "
                 f"pool {cap['pool_bytes'] / 2**20:.0f} MiB")
        caps = gather(dict(capture_s=cap["capture_s"], pool_bytes=cap["pool_bytes"],
                           sizes=sorted(runner.entries)), self.host)
        if any(c["sizes"] != caps[0]["sizes"] for c in caps):
            # a replay on one rank against an eager step on another would hang
            raise RuntimeError("ranks captured different sizes (one ran out of memory): "
                               + "; ".join(f"rank {r}: {c['sizes']}" for r, c in enumerate(caps)))
        self.pads = {bs: runner.dispatcher.pad(bs) if cfg.mode != "none" else None for bs in cfg.bs}
        msg_rows = set(cfg.bs) | {p for p in self.pads.values() if p}
        k = 2 * shape.n_layers
        self.say(f"all-reduces alone, {k} per sample")
        self.bench = measure_allreduce([b * shape.hidden for b in msg_rows]
                                       + [n // elt for n in BIG_BYTES[:3]], self.dtype, self.dev,
                                       k, cfg.time_budget, self.host, fit=self.fit,
                                       reduce=self.reduce)
        if self.lead:
            self.run.update(build_s=self.build_s, capture=cap,
                            capture_s_per_rank=[c["capture_s"] for c in caps],
                            pool_bytes_per_rank=[c["pool_bytes"] for c in caps],
                            allreduce=self.bench)

    def time_rows(self, runner):
        """Per batch size, every rank in lockstep: eager and graph (rows.measure_row)."""
        cfg, shard, host = self.cfg, self.shard, self.host
        model = (self.model(self.run, shard, cfg, self.world, self.elt)
                 if self.lead and self.model is not None else None)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        # each rank on a quick CPU of its own share, chosen once per row (bench.hostcpu)
        pin = pin_factory(cfg.pin_cpu, rank_share(self.rank, self.world), every_round=False)
        budget = Budget(cfg.steps, cfg.time_budget,
                        lockstep=lambda fn, inner, b: lockstep(fn, inner, b, host), pin=pin)
        for bs in cfg.bs:
            # tokens drawn on the host: every rank gets the same ones
            t, p, s = step_inputs(cfg.shape.vocab, bs, cfg.context, self.dev, gen, host_tokens=True)
            x = packed(t, p, s)                                                # [3, bs]
            host_costs: dict = {}
            arms = step_arms(shard, bs, x, lambda: runner.step_packed(x), cfg, budget, True,
                             host_costs)
            pad = self.pads[bs]
            row = host_fields(measure_row(arms, bs, pad, "eager" if pad is None else cfg.mode,
                                          self.say), host_costs, host_costs.get("kernels"))
            everyone = gather(dict(eager=row["eager_step_us"], graph=row["graph_step_us"],
                                   diff=row.get("max_abs_diff"),
                                   **{k: row.get(k) for k in HOST_FIELDS}), host)
            if self.lead:
                tp_row(row, everyone, self.tp1, self.bench, cfg, self.elt)
                if model is not None:
                    model.predict(row, self.tp1)
                self.run["rows"].append(row)
                # judged as the one-GPU sweep judges its rows, on each row's interval
                self.run["shape_check"] = check_shape(self.run["rows"])
                self.save(self.run)


# the host side each rank samples beside its eager steps (host_fields)
HOST_FIELDS = ("eager_host_us", "op_host_us", "piece_glue_us")


def slowest_host(row: dict, everyone: list) -> dict:
    """Every rank's sampled step host time (`eager_host_us_per_rank`), and as the row's host
    costs those of the rank whose step host time is longest (`host_rank`): the ranks meet at
    every all-reduce, so an eager step the host bounds runs at its slowest rank's pace."""
    hosts = [x.get("eager_host_us") for x in everyone]
    if any(h is None for h in hosts):
        return row
    r = max(range(len(hosts)), key=hosts.__getitem__)
    row.update(eager_host_us_per_rank=hosts, host_rank=r,
               op_host_us=everyone[r]["op_host_us"], piece_glue_us=everyone[r]["piece_glue_us"])
    return row


def tp_row(row: dict, everyone: list, tp1: dict, bench: dict, cfg, elt: int) -> dict:
    """Rank 0's measured row, with the slowest rank's medians, the largest difference from
    eager over the ranks, the all-reduce shares and TP 1's times beside."""
    k, hid = 2 * cfg.shape.n_layers, cfg.shape.hidden
    bs, padded = row["bs"], row["padded_bs"]
    row["eager_step_us_max_rank"] = max(x["eager"] for x in everyone)
    slowest_host(row, everyone)
    if row["graph_step_us"] is not None:
        row.update(graph_step_us_max_rank=max(x["graph"] for x in everyone),
                   max_abs_diff=max(x["diff"] for x in everyone))
    e_us, g_us = row["eager_step_us"], row["graph_step_us"]
    ae = point_at(bench, bs * hid * elt)
    # In an eager step each all-reduce waits for the matmul before it and costs the step
    # the longer of its host enqueue and its own time; back-to-back eager all-reduces
    # overlap one another, so their time alone understates it, and the enqueue is what a
    # host-bound step pays.
    row["allreduce_eager_us"] = k * max(ae["eager_us"], bench.get("host_us") or 0.0)
    row["allreduce_share_eager"] = row["allreduce_eager_us"] / e_us
    if g_us is not None:
        ag = point_at(bench, (padded or bs) * hid * elt)
        row["allreduce_graph_us"] = k * ag["graph_us"]
        row["allreduce_share_graph"] = row["allreduce_graph_us"] / g_us
    one = next((r for r in tp1.get("rows", []) if r["bs"] == bs), None)
    if one:
        row.update(tp1_eager_step_us=one["eager_step_us"],
                   tp1_graph_step_us=one.get("graph_step_us"),
                   tp_gain_eager=one["eager_step_us"] / e_us)
        if g_us is not None and one.get("graph_step_us"):
            row.update(tp1_speedup=one["eager_step_us"] / one["graph_step_us"],
                       tp_gain_graph=one["graph_step_us"] / g_us)
    return row


def run_tp_sweep(cfg, tp: int, compare_tp1: bool = True, progress: bool = True, save=None,
                 fit=None, model=None):
    """The sweep at TP `tp` (see the module docstring); returns (run, where it was saved) on
    rank 0, which calls save(run) whenever the run changes (a picklable callable returning the
    folder it wrote, or None: spawned ranks get a copy), and (None, None) on the other ranks
    under torchrun. fit (analysis.beside.allreduce_fit) fits the all-reduce times; model
    (analysis.beside.TPRowModel) adds the model's columns to the rows; both picklable, from
    the CLI. Bad input raises ValueError before any process group starts."""
    cfg.validate()
    check_tp(cfg.shape, tp)
    require_cuda("sweep")
    check_tp(cfg.shape, tp, torch.cuda.device_count())
    res = launch_ranks(sweep_rank, tp, args=(cfg, compare_tp1, progress, save, fit, model))
    return res[0] if res[0] is not None else (None, None)

