"""The sweep: eager against graph step time per batch size, with everything a run must record.

Step time is decode-loop latency: each step is followed by a synchronise, because a real engine
needs the step's logits on the host (to sample) before it can launch the next step. Eager steps
therefore pay every kernel launch on the critical path, which is what graphs remove.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

from microbench.engine.shapes import MAX_BATCH, MAX_CONTEXT, DTYPES, ModelShape, PRESETS
from microbench.engine.runner import MODES
from microbench.engine.ladders import resolve_ladder
from microbench.bench.timing import row_noise

DEFAULT_BS = (1, 4, 16, 64)


class GPURequired(RuntimeError):
    """Raised by commands that need CUDA on a machine without it."""


def require_cuda(command: str):
    import torch
    if not torch.cuda.is_available():
        raise GPURequired(f"`microbench {command}` needs a CUDA GPU and none was found; "
                          f"`microbench ladder`, `model` and `show` work without one")


@dataclass(frozen=True)
class SweepConfig:
    bs: tuple = DEFAULT_BS
    preset: str = "opt-125m"
    mode: str = "full"
    ladder: str = "vllm"
    context: int = 512
    dtype: str = "bfloat16"
    steps: int = 10            # steps per timing sample
    time_budget: float = 1.0   # seconds per measured figure, at most (at least 10 samples)
    backend: str = "triton"
    seed: int = 0
    out: str = "results"
    arms: tuple = ()   # extra arms; eager and graph (unless mode none) always run: microbench.bench.arms
    split_launch: bool = False   # full mode: each size as two graphs (GraphRunner split_launch)

    def validate(self) -> "SweepConfig":
        """Raise ValueError('--option: what was wrong; what is allowed') on a bad value."""
        if not self.bs:
            raise ValueError("--bs: give at least one batch size")
        if len(set(self.bs)) != len(self.bs):
            raise ValueError(f"--bs: batch sizes must be distinct, got {','.join(map(str, self.bs))}")
        for b in self.bs:
            if not isinstance(b, int) or not 1 <= b <= MAX_BATCH:
                raise ValueError(f"--bs: {b!r} is out of range; batch sizes are 1..{MAX_BATCH}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset: unknown preset {self.preset!r}; choose one of "
                             f"{', '.join(PRESETS)}")
        if self.mode not in MODES:
            raise ValueError(f"--mode: {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 1 <= self.context <= MAX_CONTEXT:
            raise ValueError(f"--context: {self.context} is out of range; 1..{MAX_CONTEXT}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype: {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {self.steps}")
        if not self.time_budget > 0:
            raise ValueError(f"--time-budget: must be > 0 seconds, got {self.time_budget}")
        from microbench.bench.arms import parse_arms
        arms = parse_arms(self.arms)
        if self.split_launch and self.mode != "full":
            raise ValueError(f"--split-launch: only with --mode full, got --mode {self.mode}")
        for a in ("graph", "torch-graph"):
            if self.mode == "none" and a in arms:
                raise ValueError(f"--arms: {a} needs a graph mode; drop --mode none or the arm")
        try:
            sizes = self.ladder_sizes()
        except ValueError as e:
            raise ValueError(f"--ladder: {e}; use vllm, sglang, pow2 or a list like 1,2,4,8") from None
        if sizes[-1] > MAX_BATCH:
            raise ValueError(f"--ladder: size {sizes[-1]} is above the limit {MAX_BATCH}")
        return self

    def ladder_sizes(self) -> list[int]:
        return resolve_ladder(self.ladder, max(self.bs))

    @property
    def shape(self) -> ModelShape:
        return PRESETS[self.preset]

    def to_dict(self) -> dict:
        return asdict(self)


def max_seq_for(context: int) -> int:
    # room for the new token; a multiple of 64 keeps attention's tiles whole
    return -(-(context + 1) // 64) * 64


def run_sweep(cfg: SweepConfig, on_row=None, on_progress=None, on_run=None) -> dict:
    """Run the sweep; returns the run dict (config, env, launch, capture, rows, totals).
    on_row(row) for each row once it is complete (its model columns come after every step is
    timed), on_run(run) whenever the run changes (to save it), on_progress(text) for status lines."""
    import torch

    from microbench.bench import arms as arms_mod
    from microbench.analysis import model as mdl
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.runner import GraphRunner
    from microbench.bench.launch import (eager_with_op_costs, kernel_breakdown, kernel_lines,
                                   measure_launch, measure_ops, profile_kernels)
    from microbench.report.record import environment
    from microbench.bench.timing import gpu_time_us, host_time_us, step_time_us
    from microbench.engine.plan import launch_counts, step_bytes

    say = on_progress or (lambda s: None)
    require_cuda("sweep")
    cfg.validate()
    t_start = time.perf_counter()
    dev = torch.device("cuda")
    shape, dtype = cfg.shape, DTYPES[cfg.dtype]
    ladder = cfg.ladder_sizes() if cfg.mode != "none" else []
    max_batch = max(max(cfg.bs), max(ladder, default=1))
    run = dict(kind="sweep", config=cfg.to_dict(), env=environment(dev), ladder=ladder,
               shape=shape.to_dict(), rows=[], interrupted=False)

    say(f"building {cfg.preset} ({shape.n_params / 1e6:.0f}M params, {cfg.dtype}), "
        f"max batch {max_batch}, context {cfg.context}")
    t0 = time.perf_counter()
    dec = ToyDecoder(shape, backend=cfg.backend, max_batch=max_batch,
                     max_seq=max_seq_for(cfg.context), dtype=dtype, device=dev, seed=cfg.seed)
    dec.fill_cache(cfg.context)
    torch.cuda.synchronize()
    run["build_s"] = time.perf_counter() - t0
    from microbench.kernels.gemv import FAST_ROWS
    from microbench.kernels.gemv import use_pdl
    # which plan the step ran, and whether its Triton kernels launch with PDL
    run["decoder"] = dict(fuse=dec.fuse, fuse_attention=dec.attention_fused, fast_rows=FAST_ROWS,
                          pdl=use_pdl(dec.embed))

    runner = trunner = None
    to_profile = []  # (bs, padded, eager, graph): profiled after every timing, see below
    extra = [a for a in cfg.arms if a in arms_mod.EXTRA_ARMS]
    arm_fns = {}     # (arm, row) -> that row's step callable, for the graphed check
    run["arms"] = {a: {} for a in ("eager", *(["graph"] if cfg.mode != "none" else []), *extra)}
    try:
        runner = GraphRunner(dec, ladder, mode=cfg.mode, progress=on_progress is not None,
                             split_launch=cfg.split_launch)
        cap = runner.capture()
        run["capture"] = cap
        run["capture_s"], run["pool_bytes"] = cap["capture_s"], cap["pool_bytes"]
        if cfg.mode != "none":
            run["arms"]["graph"].update(setup_s=cap["capture_s"], pool_bytes=cap["pool_bytes"])
        twin = arms_mod.torch_twin(dec) if extra else None
        compiled = arms_mod.CompiledStep(twin) if "compile" in extra else None
        elt = torch.finfo(dtype).bits // 8
        kernels = dec.plan(cfg.bs[0], cfg.context, elt)
        run["kernels_per_step"] = dict(planned=launch_counts(kernels))
        kw = dict(budget_s=cfg.time_budget)
        measured = []   # (row, padded): the rows the model predicts once the device is measured
        gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        for bs in cfg.bs:
            tokens = torch.randint(shape.vocab, (bs,), generator=gen, device=dev)
            positions = torch.full((bs,), cfg.context, dtype=torch.long, device=dev)
            slots = torch.arange(bs, dtype=torch.long, device=dev)
            packed = torch.stack([tokens, positions, slots])          # [3, bs]
            # (inputs bound as defaults: the profiling pass calls these after the loop)
            eager = lambda t=tokens, p=positions, s=slots: dec.step(t, p, s)
            # the runner takes the batch as one tensor, as an engine's persistent batch is
            graph = lambda x=packed: runner.step_packed(x)
            padded = runner.dispatcher.pad(bs) if cfg.mode != "none" else None
            if bs in (cfg.bs[0], cfg.bs[-1]):
                to_profile.append((bs, padded, eager, graph))
            say(f"bs {bs}: eager")
            # eager steps are host-bound, and the host is the noisier side: twice the budget;
            # the plan's op host costs are sampled between the steps, for the model
            e_wall, row_ops, glue = eager_with_op_costs(eager, dec, bs, cfg.steps,
                                                        2 * cfg.time_budget)
            e_host = host_time_us(eager, **kw)
            row = dict(bs=bs, padded_bs=padded, ran_as="eager" if padded is None else cfg.mode,
                       eager_step_us=e_wall.median, eager_p20=e_wall.p20,
                       eager_p80=e_wall.p80, eager_n=e_wall.n, eager_host_us=e_host.median)
            want = eager().float()
            if cfg.mode != "none":
                say(f"bs {bs}: graph")
                got = graph().float()
                g_gpu, g_wall = step_time_us(graph, inner=cfg.steps, sync_each=True, **kw)
                g_busy = gpu_time_us(graph, inner=cfg.steps, **kw)
                g_host = host_time_us(graph, **kw)
                row.update(graph_step_us=g_wall.median, graph_p20=g_wall.p20,
                           graph_p80=g_wall.p80, graph_n=g_wall.n,
                           graph_gpu_us=g_busy.median, graph_host_us=g_host.median,
                           speedup=e_wall.median / g_wall.median,
                           max_abs_diff=float((got - want).abs().max()))
            else:
                row.update(graph_step_us=None, speedup=None)
            for arm in extra:
                say(f"bs {bs}: {arm}")
                k = arms_mod.key(arm)
                if arm == "torch-eager":
                    fn = lambda t=tokens, p=positions, s=slots: twin.step(t, p, s)
                elif arm == "torch-graph":
                    if trunner is None:
                        # Captured here, once the graph arm of the first batch size is timed (as
                        # the device figures are measured last): other graphs' capture and replay
                        # before ours slowed our later replays (scripts/probe_sweep_gpu.py), and
                        # with this runner captured before the loop the bs-1 llama-1b graph read
                        # 1015.9 us of GPU time in the all-arms run of 32bbd3c, against 998.7 in
                        # the default sweep minutes before.
                        say("capturing the torch backend's graphs (arm torch-graph)")
                        trunner = GraphRunner(twin, ladder, mode=cfg.mode,
                                              progress=on_progress is not None,
                                              split_launch=cfg.split_launch)
                        tcap = trunner.capture()
                        run["arms"]["torch-graph"].update(setup_s=tcap["capture_s"],
                                                          pool_bytes=tcap["pool_bytes"])
                    fn = lambda x=packed: trunner.step_packed(x)
                else:
                    say(f"bs {bs}: compiling (torch.compile, reduce-overhead)")
                    compiled.prepare(tokens, positions, slots)
                    row["compile_setup_s"] = compiled.setup_s[bs]
                    fn = lambda t=tokens, p=positions, s=slots: compiled(t, p, s)
                row[f"{k}_max_abs_diff"] = float((fn().float() - want).abs().max())
                _, a_wall = step_time_us(fn, inner=cfg.steps, sync_each=True, **kw)
                row.update({f"{k}_step_us": a_wall.median, f"{k}_p20": a_wall.p20,
                            f"{k}_p80": a_wall.p80, f"{k}_n": a_wall.n})
                arm_fns[(arm, id(row))] = (row, fn)
            arm_fns[("eager", id(row))] = (row, eager)
            if cfg.mode != "none":
                arm_fns[("graph", id(row))] = (row, graph)
            best = row["graph_step_us"] or row["eager_step_us"]
            row.update(eager_tok_s=bs / row["eager_step_us"] * 1e6,
                       graph_tok_s=(bs / row["graph_step_us"] * 1e6) if row["graph_step_us"] else None)
            row.update(eager_tok_s_per_seq=row["eager_tok_s"] / bs,
                       graph_tok_s_per_seq=(row["graph_tok_s"] / bs) if row["graph_tok_s"] else None,
                       padding_waste=((padded - bs) / padded) if padded else 0.0)
            nbytes = step_bytes(shape, bs, cfg.context, elt, fuse=dec.fusion)
            row.update(step_bytes=nbytes, bw_use=nbytes / (best * 1e-6))
            # the host side of this row as measured beside its steps (the host's speed drifts)
            row.update(op_host_us=row_ops, piece_glue_us=glue)
            measured.append((row, padded))
            run["rows"].append(row)
            if on_run:
                on_run(run)
        # The device's launch costs, copy bandwidth, matrix rate and kernel lines are measured
        # after every step is timed: their many small graphs, captured, replayed and freed,
        # left a later llama-1b bs-1 replay 15-25 us (1.5-2.5%) slower on the H100, for the
        # rest of the process (scripts/probe_sweep_gpu.py, results/h100/logs/sweep-gpu-*.log).
        say("measuring launch costs, copy bandwidth and matrix rate")
        launch = measure_launch(dev, budget_s=min(cfg.time_budget, 0.5))
        launch["ops_host_us"] = measure_ops(dec, 1, budget_s=min(cfg.time_budget, 0.3))
        say("timing the step's kernels inside graphs (the model's per-family lines)")
        launch["kernel_lines"] = kernel_lines(dec, cfg.context, budget_s=min(cfg.time_budget, 0.1),
                                              replay_fixed_us=max(0.0, launch["replay_fit"]["gpu_fixed_us"]))
        run["launch"] = launch
        profile = mdl.DeviceProfile.from_launch(launch, name=run["env"]["gpu"], source="measured: this run")
        run["profile"] = profile.to_dict()
        for i, (row, padded) in enumerate(measured):
            bs = row["bs"]
            best = row["graph_step_us"] or row["eager_step_us"]
            row["graph_mbu"] = row["step_bytes"] / (best * 1e-6) / profile.copy_bw
            row_profile = replace(profile, op_host_us={**profile.op_host_us, **row["op_host_us"]},
                                  piece_glue_us=row["piece_glue_us"], graph_host_us=row.get("graph_host_us"))
            if i == 0:
                # the first row's eager bill by launcher, from the host costs sampled beside
                # its own steps (the launch figures above are the host's state at the end)
                run["eager_breakdown"] = eager_breakdown(kernels, row_profile)
            pred = mdl.predict(shape, bs, cfg.context, row_profile, padded=padded or bs, elt=elt,
                               attn_launches=dec.attention_launches(bs),
                               padded_attn_launches=dec.attention_launches(padded or bs),
                               fuse=dec.fusion)
            row.update(predicted_eager_step_us=pred["predicted_eager_step_us"],
                       predicted_graph_step_us=pred["predicted_graph_step_us"],
                       predicted_speedup=pred["predicted_speedup"])
            if row.get("speedup"):
                row["speedup_error"] = row["predicted_speedup"] / row["speedup"] - 1
            if on_row:
                on_row(row)
        if on_run:
            on_run(run)
        if cfg.mode != "none":
            one = runner.dispatcher.pad(cfg.bs[0])
            if one:
                b0 = cfg.bs[0]
                toks = torch.zeros(b0, dtype=torch.long, device=dev)
                pos = torch.full_like(toks, cfg.context)
                sl = torch.arange(b0, device=dev)
                packed = torch.stack([toks, pos, sl])
                run["runner_host_us"] = host_time_us(lambda: runner.step_packed(packed), **kw).to_dict()
                run["runner_host_unpacked_us"] = host_time_us(lambda: runner.step(toks, pos, sl), **kw).to_dict()
                # where that host time goes: the one input copy, and the replay call alone
                e = runner.entries[one]
                view = runner._rows(b0)[0]
                run["runner_host_parts_us"] = dict(
                    copy=host_time_us(lambda: view.copy_(packed), **kw).median,
                    replay=host_time_us(e.graphs[0].replay, **kw).median)
        # The profiler runs last: once it has traced kernels, its CUPTI hooks stay attached
        # and slow every later launch and graph replay on the host (replay call of opt-125m's
        # bs-1 graph: 5 to 13 us in sweeps that profile last; 47 to 123 us in those of commit
        # a476c0d, which profiled first).
        if compiled is not None:
            run["arms"]["compile"].update(setup_s=sum(compiled.setup_s.values()),
                                          setup_s_per_bs={str(b): v for b, v in compiled.setup_s.items()},
                                          inductor_cudagraph_skips=compiled.skips)
        # An arm counts as graphed at a batch size only if its step there launched a CUDA
        # graph, and as graphed overall only if it did at every batch size.
        for (arm, _), (row, fn) in arm_fns.items():
            row[f"{arms_mod.key(arm)}_graphed"] = g = arms_mod.launched_graph(fn)
            run["arms"][arm]["graphed"] = run["arms"][arm].get("graphed", True) and g
        for bs, padded, eager, graph in to_profile:
            # The profiler sees every kernel a graph replay runs: the graph's kernel nodes.
            replay = profile_kernels(graph) if padded else None
            if bs == cfg.bs[0]:
                eager_kernels = profile_kernels(eager)
                run["kernels_per_step"]["measured"] = len(eager_kernels)
                # GPU busy time of one eager step, against the host time its launches take
                run["eager_gpu_busy_us"] = sum(us for _, us in eager_kernels)
                run["kernels_per_step"]["graph_kernels"] = len(replay) if replay else None
            if replay:
                # where the GPU time of one replay goes, by kernel family
                run.setdefault("graph_gpu_breakdown", {})[str(bs)] = kernel_breakdown(replay)
    except KeyboardInterrupt:
        run["interrupted"] = True
    finally:
        # whatever happened, the rows measured so far are kept and the pool is given back
        run["shape_check"] = check_shape(run["rows"])
        run["wall_s"] = time.perf_counter() - t_start
        if runner is not None:
            run["runner_counts"] = dict(runner.counts)
            runner.close()
        if trunner is not None:
            run["arms"]["torch-graph"]["runner_counts"] = dict(trunner.counts)
            trunner.close()
        if on_run:
            on_run(run)
    return run


def eager_breakdown(kernels, profile) -> dict:
    """Where one eager step's host time goes: kernels and host us per launcher, from the
    per-op host costs measured through the decoder's wrappers."""
    out: dict = {}
    for k in kernels:
        d = out.setdefault(k.launcher, dict(kernels=0, host_us=0.0))
        d["kernels"] += 1
        d["host_us"] += profile.kernel_host_us(k)
    return out


def speedup_noise(row: dict, floor: float = 0.03) -> float:
    """Relative noise of a row's speedup: the p20-p80 spreads of its eager and graph times
    added (a ratio's relative error is about the sum of its parts'), each at least `floor`."""
    return row_noise(row, "eager_", floor) + row_noise(row, "graph_", floor)


def check_shape(rows: list[dict], noise: float | None = None) -> dict:
    """Do measured speedups hold the published shape? Largest at the smallest batch, not
    increasing with batch size beyond noise, never below 1 beyond noise. Noise is each row's
    measured spread (speedup_noise) unless `noise` fixes it."""
    rs = sorted((r for r in rows if r.get("speedup")), key=lambda r: r["bs"])
    if not rs:
        return dict(held=None, why="no graph rows")
    vals = [r["speedup"] for r in rs]
    nz = [noise if noise is not None else speedup_noise(r) for r in rs]
    largest_first = all(vals[0] * (1 + nz[0] + n) >= v for v, n in zip(vals, nz))
    monotone = all(b <= a * (1 + na + nb) for a, b, na, nb in zip(vals, vals[1:], nz, nz[1:]))
    above_one = all(v >= 1 - n for v, n in zip(vals, nz))
    held = largest_first and monotone and above_one
    why = []
    if not largest_first:
        why.append("speedup is not largest at the smallest batch")
    if not monotone:
        why.append("speedup rises with batch size beyond noise")
    if not above_one:
        why.append("a graph step is slower than eager")
    return dict(held=held, largest_at_smallest=largest_first, non_increasing=monotone,
                never_below_one=above_one, noise=nz, why="; ".join(why) or "held")
