"""The sweep: eager against graph step time per batch size, with everything a run must record.

Step time is decode-loop latency: each step is followed by a synchronise, because a real engine
needs the step's logits on the host (to sample) before it can launch the next step. Eager steps
therefore pay every kernel launch on the critical path, which is what graphs remove.
"""
from __future__ import annotations

import time

from microbench.engine.shapes import torch_dtype
from microbench.engine.runner import GraphRunner
from microbench.bench import arms as arms_mod
from microbench.bench.bandwidth import family_bandwidth, kernels_without_pdl
from microbench.bench.env import environment, require_cuda
from microbench.bench.hostcpu import pin_factory, slow_in_figures
from microbench.bench.sweep_config import SweepConfig, max_seq_for
from microbench.bench.inputs import packed, step_inputs
from microbench.bench.launch import measure_device_profile
from microbench.bench.profile import busy_us, kernel_breakdown, kernel_spans, profile_kernels, trace_steps
from microbench.bench.rows import (Arm, Budget, eager_timer, graph_timer, host_fields, measure_row,
                                   wall_timer)
from microbench.bench.timing import host_time_us
from microbench.engine.nvtx import phase
from microbench.engine.plan import Fusion, launch_counts, step_bytes
from microbench.stats import check_shape

def run_sweep(cfg: SweepConfig, on_row=None, on_progress=None, on_run=None, predict=None,
              on_capture=None, on_rows=None, on_phase=None, on_trace=None,
              on_round=None, turn=None) -> dict:
    """Run the sweep; returns the run dict (config, env, launch, capture, rows, totals).
    on_row(row) for each row once it is complete (its model columns come after every step is
    timed), on_run(run) whenever the run changes (to save it), on_progress(text) for status
    lines; predict (analysis.beside.predict_sweep) adds the model's columns to the rows.
    For a progress display: on_capture is each graph runner's (GraphRunner), on_rows(done,
    total, bs) is told before each row (bs) and after the last (bs None), on_phase(name,
    seconds) when a long phase (compiling) starts (seconds None) and ends, on_round(rounds,
    seconds, cap) after each round of a row's rotation (timing.interleave). on_trace(prof) gets
    the PyTorch profiler of one eager and one graphed step at the first batch size, last
    (profile.trace_steps; the CLI writes it as a Chrome trace). turn(phase), when given
    (bench.turns' gate of a --repeat process), is called before each phase that uses the GPU
    (the build and capture, each row, the device figures and everything after) and returns
    when this process may run it.

    Order matters: every step is timed first; the device's launch costs, copy bandwidth,
    matrix rate and kernel lines after (their many small graphs, captured, replayed and freed,
    slow later replays for the rest of the process: docs/notes.md); the profiler last
    (once it has traced kernels, its CUPTI hooks stay attached and slow every later launch and
    replay on the host)."""
    say = on_progress or (lambda s: None)
    require_cuda("sweep")
    cfg.validate()
    waited = [0.0]

    def gate(phase):   # the time spent waiting for a turn is not the sweep's own
        if turn is not None:
            t0 = time.perf_counter()
            try:
                turn(phase)
            finally:
                waited[0] += time.perf_counter() - t0

    t_start = time.perf_counter()
    gate("build")
    sw = _Sweep(cfg, say, on_capture, on_phase, on_round)
    run = sw.run
    save = on_run or (lambda r: None)
    try:
        sw.capture()
        for i, bs in enumerate(cfg.bs):
            if on_rows:
                on_rows(i, len(cfg.bs), bs)
            gate(f"bs {bs}")
            measure_until_quick(bs, sw.measure, sw.retract, gate, say)
            save(run)
        if on_rows:
            on_rows(len(cfg.bs), len(cfg.bs), None)
        gate("device")
        sw.measure_device()
        sw.predict(predict, on_row)
        save(run)
        sw.runner_host()
        sw.graphed_and_profiled()
        if on_trace is not None:
            sw.trace(on_trace)
    except KeyboardInterrupt:
        run["interrupted"] = True
    finally:
        # whatever happened, the rows measured so far are kept and the pool is given back
        sw.close(t_start, waited[0] if turn is not None else None)
        save(run)
    return run


ROW_RETRIES = 2   # a row whose figures kept rounds on a slow host: sampled again this often


def measure_until_quick(bs: int, measure, retract, gate, say, retries: int = ROW_RETRIES) -> dict:
    """Row `bs` by measure(bs) -> row; while its figures keep rounds sampled on a slow host after
    its wait ran out (hostcpu.slow_in_figures: with the quiet rule, only a row that fell back to
    every round), sample it again at the process's next turn (gate, a --repeat process's;
    without one, at once) and take the earlier try back (retract(row)), up to `retries` times.
    Each try waits for the host again, so a slow phase that outlasts one row's wait costs the
    row up to that wait and its time cap again per try, measured in turn beside the other
    processes' rows, where it used to cost a whole replacement process run after the others
    (cli_repeat). The kept row's `host_pin` lists the slow rounds of the tries it replaced
    (`retried_slow_rounds`); a row still slow after them is kept, and --repeat replaces its
    process as before. An interrupt during a try keeps the try before it."""
    row, dropped = measure(bs), []
    while slow_in_figures(row.get("host_pin")) and len(dropped) < retries:
        dropped.append(slow_in_figures(row.get("host_pin")))
        say(f"bs {bs}: {dropped[-1]} rounds sampled on a slow host after the wait ran out; "
            "sampling the row again")
        gate(f"bs {bs} again")
        new = measure(bs)
        retract(row)
        row = new
    if dropped:
        row["host_pin"]["retried_slow_rounds"] = dropped
    return row


class _Sweep:
    """One sweep's decoder, runners and arms; its methods are the sweep's phases in order."""

    def __init__(self, cfg: SweepConfig, say, on_capture=None, on_phase=None, on_round=None):
        import torch

        from microbench.engine.decoder import ToyDecoder
        from microbench.engine.plan import FAST_ROWS
        from microbench.engine.pdl import modes_at
        from microbench.kernels.gemv import use_pdl
        self.cfg, self.say, self.on_capture, self.on_round = cfg, say, on_capture, on_round
        # a long phase's name is a status line when no progress display follows phases
        self.on_phase = on_phase or (lambda name, seconds: seconds is None and say(name))
        self.dev = dev = torch.device("cuda")
        shape, dtype = cfg.shape, torch_dtype(cfg.dtype)
        self.ladder = cfg.ladder_sizes() if cfg.mode != "none" else []
        max_batch = max(max(cfg.bs), max(self.ladder, default=1))
        self.run = run = dict(kind="sweep", config=cfg.to_dict(), env=environment(dev),
                              ladder=self.ladder, shape=shape.to_dict(), rows=[], interrupted=False)
        say(f"building {cfg.preset} ({shape.n_params / 1e6:.0f}M params, {cfg.dtype}), "
            f"max batch {max_batch}, context {cfg.context}")
        t0 = time.perf_counter()
        self.dec = dec = ToyDecoder(shape, backend=cfg.backend, max_batch=max_batch,
                                    max_seq=max_seq_for(cfg.context), dtype=dtype, device=dev,
                                    seed=cfg.seed)
        dec.fill_cache(cfg.context)
        torch.cuda.synchronize()
        run["build_s"] = time.perf_counter() - t0
        # which plan the step ran, and how its Triton kernels launch at each batch size (swept
        # or captured): the PDL mode (off wherever the GPU has none, whatever was asked)
        sizes = sorted(set(cfg.bs) | set(self.ladder))
        pdl_rows = modes_at(dec.pdl_at, sizes, lambda arg: use_pdl(dec.embed, arg))
        run["decoder"] = dict(fusion=int(dec.fusion), fast_rows=FAST_ROWS,
                              pdl=any(mode != "off" for mode in pdl_rows), pdl_rows=pdl_rows,
                              # the mode of the first batch size, as runs before pdl_rows had
                              pdl_mode=next(m for m, bs in pdl_rows.items() if sizes[0] in bs),
                              # the batch sizes whose matmuls run cuBLASLt
                              cublaslt_rows=[b for b in sizes
                                             if b > FAST_ROWS and dec.blas(b) == "cublaslt"],
                              # and those whose fused attention split the cache in another
                              # mode than fill, or ran as separate kernels (engine/splits.py)
                              capped_split_rows=split_rows(dec, sizes, "capped"),
                              half_tile_rows=split_rows(dec, sizes, "half-tile"),
                              separate_attention_rows=split_rows(dec, sizes, "separate"))
        self.runner = self.trunner = self.twin = None
        self.compiled = {}     # arm -> its compiled step (arms.COMPILED_ARMS)
        # the unfused plan on the same weights and caches (arm engine-eager); the torch backend
        # has no bound steps, so neither arm there
        self.plain = dec.with_fusion(Fusion.UNFUSED) if cfg.backend == "triton" else None
        self.to_profile = []   # (bs, padded, eager, graph, row): profiled after every timing
        self.extra = [a for a in cfg.arms if a in arms_mod.EXTRA_ARMS]
        self.arm_fns = []      # (arm, row, step callable), for the graphed check
        self.measured = []     # (row, padded): the rows the model predicts once the device is measured
        run["arms"] = {a: {} for a in ("eager", *(["graph"] if cfg.mode != "none" else []),
                                       *(["engine-eager"] if self.plain is not None else []),
                                       *self.extra)}
        self.elt = torch.finfo(dtype).bits // 8
        self.budget = Budget(cfg.steps, cfg.time_budget, pin=pin_factory(cfg.pin_cpu))
        self.gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        self.gen_states = {}   # bs -> the generator's state its inputs were drawn from

    def capture(self):
        cfg, run, dec = self.cfg, self.run, self.dec
        self.runner = GraphRunner(dec, self.ladder, mode=cfg.mode, on_capture=self.on_capture,
                                  split_launch=cfg.split_launch, full_max_size=cfg.full_max_size)
        cap = self.runner.capture()
        run["capture"] = cap
        run["capture_s"], run["pool_bytes"] = cap["capture_s"], cap["pool_bytes"]
        if cfg.mode != "none":
            run["arms"]["graph"].update(setup_s=cap["capture_s"], pool_bytes=cap["pool_bytes"])
        self.twin = arms_mod.torch_twin(dec) if self.extra else None
        self.compiled = {a: arms_mod.compiled_arm(a, dec, self.twin) for a in self.extra
                         if a in arms_mod.COMPILED_ARMS}
        self.kernels = dec.plan(cfg.bs[0], cfg.context, self.elt)
        run["kernels_per_step"] = dict(planned=launch_counts(self.kernels))

    def measure(self, bs: int) -> dict:
        """One batch size's row: every arm timed (rows.measure_row), then what follows from it;
        the row, also added to the run."""
        cfg, dec, runner = self.cfg, self.dec, self.runner
        # a batch size's inputs are the same on every try (measure_until_quick), and so are
        # those of the rows after it
        self.gen.set_state(self.gen_states.setdefault(bs, self.gen.get_state()))
        t, p, s = step_inputs(cfg.shape.vocab, bs, cfg.context, self.dev, self.gen)
        x = packed(t, p, s)                                                   # [3, bs]
        # the eager arms run bound steps (engine.bound): each kernel's checks, outputs and
        # launch binding done once, as an engine's eager step has them; eager runs this plan,
        # engine-eager the unfused plan (what enforce_eager turns off: fusions and graphs)
        bound = dec.bind(bs) if self.plain is not None else None
        eager = (lambda: bound.step_packed(x)) if bound else (lambda: dec.step(t, p, s))
        # the runner takes the batch as one tensor, as an engine's persistent batch is
        graph = lambda: runner.step_packed(x)
        # what a decode step of bs replays: under full_and_piecewise a full graph where the full
        # pass captured its padded size, else a piecewise one (ran_as says which)
        ran_as, padded = runner.route(bs)
        host_costs: dict = {}
        arms = {"eager": Arm(eager, eager_timer(dec, bs, self.budget, host_costs, bound))}
        if cfg.mode != "none":
            arms["graph"] = Arm(graph, graph_timer(self.budget), diff="max_abs_diff")
        if self.plain is not None:
            plain = self.plain.bind(bs)
            arms["engine-eager"] = Arm(lambda: plain.step_packed(x),
                                       wall_timer("engine_eager_", self.budget),
                                       diff="engine_eager_max_abs_diff")
        for arm in self.extra:
            arms[arm] = self.extra_arm(arm, bs, t, p, s, x)
        row = measure_row(arms, bs, padded, ran_as, self.say, on_round=self.on_round)
        for arm in (*self.extra, *(a for a in arms if a not in self.extra)):
            self.arm_fns.append((arm, row, arms[arm].step))
        # the host side of this row as measured beside its steps (the host's speed drifts)
        host_fields(row, host_costs, len(bound) if bound is not None else None)
        row.update(throughput_fields(row, bs, padded))
        nbytes = step_bytes(cfg.shape, bs, cfg.context, self.elt, fusion=dec.fusion_at(bs),
                            attn_launches=dec.attention_launches(bs))
        best = row["graph_step_us"] or row["eager_step_us"]
        row.update(step_bytes=nbytes, bw_use=nbytes / (best * 1e-6))
        # every swept size is profiled: where each row's replay time goes, by kernel family
        self.to_profile.append((bs, padded, eager, graph, row))
        self.measured.append((row, padded))
        self.run["rows"].append(row)
        return row

    def retract(self, row: dict):
        """Take back a row measure() added, and what it queued for later phases."""
        self.run["rows"][:] = [r for r in self.run["rows"] if r is not row]
        self.measured = [m for m in self.measured if m[0] is not row]
        self.to_profile = [e for e in self.to_profile if e[4] is not row]
        self.arm_fns = [a for a in self.arm_fns if a[1] is not row]

    def extra_arm(self, arm: str, bs: int, t, p, s, x) -> Arm:
        """An arm of microbench.bench.arms beside eager and graph, on the same inputs."""
        k = arms_mod.key(arm)
        timer = wall_timer(f"{k}_", self.budget)
        if arm == "torch-eager":
            return Arm(lambda: self.twin.step(t, p, s), timer, diff=f"{k}_max_abs_diff")
        if arm == "torch-graph":
            return Arm(lambda: self.trunner.step_packed(x), timer, diff=f"{k}_max_abs_diff",
                       prepare=lambda row: self.capture_torch_graphs())

        compiled = self.compiled[arm]

        def compile_bs(row):
            if bs not in compiled.setup_s:   # a row's second try (measure_until_quick) is warm
                with phase(f"bs {bs}: torch.compile of {arm} (compile, warm up, record)",
                           self.on_phase):
                    compiled.prepare(t, p, s)
            row[f"{k}_setup_s"] = compiled.setup_s[bs]
        return Arm(lambda: compiled(t, p, s), timer, diff=f"{k}_max_abs_diff",
                   prepare=compile_bs)

    def capture_torch_graphs(self):
        # Captured here, once the graph arm of the first batch size is timed (as the device
        # figures are measured last): other graphs captured and replayed before ours slow our
        # later replays (docs/notes.md).
        if self.trunner is not None:
            return
        self.say("capturing the torch backend's graphs (arm torch-graph)")
        self.trunner = GraphRunner(self.twin, self.ladder, mode=self.cfg.mode,
                                   on_capture=self.on_capture, split_launch=self.cfg.split_launch,
                                   full_max_size=self.cfg.full_max_size)
        tcap = self.trunner.capture()
        self.run["arms"]["torch-graph"].update(setup_s=tcap["capture_s"],
                                               pool_bytes=tcap["pool_bytes"])

    def measure_device(self):
        """Launch costs, copy bandwidth, matrix rate and kernel lines: after every step is timed."""
        cfg, dec, run = self.cfg, self.dec, self.run
        launch = measure_device_profile(dec, cfg.context, cfg.time_budget, cfg.pin_cpu, self.say)
        run["launch"] = launch
        # the eager step's host time per kernel, beside the bare launch costs above
        run["eager_host_us_per_kernel"] = {str(r["bs"]): r["eager_host_us_per_kernel"]
                                           for r in run["rows"] if "eager_host_us_per_kernel" in r}

    def predict(self, predict, on_row=None):
        """The model's columns of every row, by predict(run, dec, measured, context, elt,
        kernels) (analysis.beside.predict_sweep from the CLI; none without it), then on_row."""
        if predict is not None:
            predict(self.run, self.dec, self.measured, self.cfg.context, self.elt, self.kernels)
        for row, _ in self.measured:
            if on_row:
                on_row(row)

    def runner_host(self):
        """Host time of the runner's step at the first batch size, and where it goes."""
        cfg, runner, run = self.cfg, self.runner, self.run
        routine, one = runner.route(cfg.bs[0])
        if not one:
            return
        kw = dict(budget_s=cfg.time_budget)
        b0 = cfg.bs[0]
        toks, pos, sl = step_inputs(cfg.shape.vocab, b0, cfg.context, self.dev)
        x = packed(toks, pos, sl)
        run["runner_host_us"] = host_time_us(lambda: runner.step_packed(x), **kw).to_dict()
        run["runner_host_unpacked_us"] = host_time_us(lambda: runner.step(toks, pos, sl), **kw).to_dict()
        # where that host time goes: the one input copy, and the replay calls alone (every
        # graph of the size: one, two with split_launch, one per piece when piecewise)
        e = runner.graphs[routine][one]
        view = runner.input_rows(b0)[0]
        run["runner_host_parts_us"] = dict(
            copy=host_time_us(lambda: view.copy_(x), **kw).median,
            replay=host_time_us(lambda: [g.replay() for g in e.graphs], **kw).median)

    def graphed_and_profiled(self):
        """Last, under the profiler: whether each arm launched a CUDA graph (at every batch
        size, to count as graphed overall), and the kernels of every row."""
        from microbench.kernels.gemv import use_pdl
        run = self.run
        for arm, compiled in self.compiled.items():
            run["arms"][arm].update(setup_s=sum(compiled.setup_s.values()),
                                    setup_s_per_bs={str(b): v for b, v in compiled.setup_s.items()},
                                    inductor_cudagraph_skips=compiled.skips)
        for arm, row, fn in self.arm_fns:
            row[f"{arms_mod.key(arm)}_graphed"] = g = arms_mod.launched_graph(fn)
            run["arms"][arm]["graphed"] = run["arms"][arm].get("graphed", True) and g
        for bs, padded, eager, graph, _ in self.to_profile:
            # The profiler sees every kernel a graph replay runs: the graph's kernel nodes.
            replay = profile_kernels(graph) if padded else None
            if bs == self.cfg.bs[0]:
                eager_kernels = kernel_spans(eager)
                run["kernels_per_step"]["measured"] = len(eager_kernels)
                # GPU busy time of one eager step (while any of its kernels ran: PDL's overlap
                # counted once), against the host time its launches take
                run["eager_gpu_busy_us"] = busy_us(eager_kernels)
                run["kernels_per_step"]["graph_kernels"] = len(replay) if replay else None
            if replay:
                # where the GPU time of one replay goes, by kernel family
                run.setdefault("graph_gpu_breakdown", {})[str(bs)] = fams = kernel_breakdown(replay)
                # each plan family's bytes against its kernels' own time (with PDL a kernel's
                # time includes its wait for the one before: timed again without), and the copy
                # bandwidth
                if use_pdl(self.dec.embed, self.dec.pdl_at(padded)):
                    fams = kernel_breakdown(kernels_without_pdl(self.dec, bs, padded, self.cfg.mode,
                                                                self.cfg.context))
                copy_bw = (run.get("launch") or {}).get("copy", {}).get("bytes_per_s")
                run.setdefault("graph_family_bw", {})[str(bs)] = family_bandwidth(
                    fams, self.dec.plan(padded, self.cfg.context, self.elt), copy_bw)

    def trace(self, on_trace):
        """One eager and one graphed step at the first batch size under the PyTorch profiler,
        handed to on_trace(prof)."""
        bs, padded, eager, graph, _ = self.to_profile[0]
        steps = {f"eager step, bs {bs}": eager}
        if padded:
            steps[f"graph step, bs {bs} (graph {padded})"] = graph
        trace_steps(steps, on_trace)

    def close(self, t_start: float, turn_wait_s: float | None = None):
        """The shape checks, the wall time (less turn_wait_s, the time spent waiting for turns,
        recorded beside it) and the runners' counts; the runners give their pools back."""
        run = self.run
        run["shape_check"] = check_shape(run["rows"])
        if any(r.get("engine_eager_speedup") for r in run["rows"]):
            # the bundle an operator toggles (unfused kernels and no graphs), as published
            run["shape_check_engine"] = check_shape(run["rows"], prefix="engine_eager_")
        run["wall_s"] = time.perf_counter() - t_start - (turn_wait_s or 0.0)
        if turn_wait_s is not None:
            run["turn_wait_s"] = turn_wait_s
        if self.runner is not None:
            run["runner_counts"] = dict(self.runner.counts)
            self.runner.close()
        if self.trunner is not None:
            run["arms"]["torch-graph"]["runner_counts"] = dict(self.trunner.counts)
            self.trunner.close()


def throughput_fields(row: dict, bs: int, padded) -> dict:
    """Tokens per second overall and per sequence, and the share of padded rows."""
    e, g = row["eager_step_us"], row["graph_step_us"]
    eager_tok_s = bs / e * 1e6
    graph_tok_s = (bs / g * 1e6) if g else None
    return dict(eager_tok_s=eager_tok_s, graph_tok_s=graph_tok_s,
                eager_tok_s_per_seq=eager_tok_s / bs,
                graph_tok_s_per_seq=(graph_tok_s / bs) if graph_tok_s else None,
                padding_waste=((padded - bs) / padded) if padded else 0.0)


def split_rows(dec, sizes, mode: str) -> list:
    """The batch sizes among `sizes` at which `dec`'s attention launches in `mode`
    (engine/splits.py; none when the decoder's plan does not fuse attention)."""
    return [b for b in sizes if dec.fusion == Fusion.ATTENTION and dec.split_mode(b) == mode]
