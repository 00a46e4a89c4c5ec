"""The lab `reproduce` runs its experiments in: one decoder, the graphs each experiment
captures, and the step times they share (a (execution, graph size, bs) triple is timed once per
run, through the one measured-row routine, rows.measure_row).
"""
from __future__ import annotations

import gc
import warnings

import torch

from microbench.bench.hostcpu import pin_factory
from microbench.bench.inputs import packed, step_inputs
from microbench.bench.launch import measure_device_profile
from microbench.bench.ops import bound_steps
from microbench.bench.rows import Arm, Budget, measure_row, wall_timer
from microbench.bench.sweep_config import max_seq_for
from microbench.engine.decoder import ToyDecoder
from microbench.engine.plan import Fusion
from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.runner import GraphRunner
from microbench.engine.shapes import torch_dtype


def timed_row(bs: int, padded, ran_as: str, t: dict) -> dict:
    """One timed batch: step time is the wall median of synchronised steps (decode latency)."""
    return dict(bs=bs, padded_bs=padded, ran_as=ran_as, step_us=t["step_us"], p20=t["p20"],
                p80=t["p80"], n=t["n"], event_us=t["event_us"], tok_s=bs / t["step_us"] * 1e6,
                tok_s_per_seq=1e6 / t["step_us"])


class Lab:
    """One decoder and what the experiments share: inputs, timing options, measured step times
    (a (execution, graph size, bs) triple is timed once per run) and cached measurements."""

    def __init__(self, cfg, dec, context: int, say=None, predict=None, on_capture=None):
        self.cfg, self.dec, self.context = cfg, dec, context
        self.say = say or (lambda s: None)
        self.on_capture = on_capture     # GraphRunner's on_capture, for each capture's progress
        # predict(rows, dec, launch, gpu, context, elt) -> profile dict: the model's columns
        # of speedup-fade's rows (analysis.beside.predict_fade, from the CLI)
        self.predict = predict
        self.times: dict = {}
        self.cache: dict = {}
        self._inputs: dict = {}

    def inputs(self, bs: int):
        x = self._inputs.get(bs)
        if x is None:
            dev = self.dec.device
            gen = torch.Generator(device=dev).manual_seed(self.cfg.seed + bs)
            x = self._inputs[bs] = packed(*step_inputs(self.dec.shape.vocab, bs, self.context,
                                                       dev, gen))               # [3, bs]
        return x

    def capture(self, sizes, mode: str = "full", **kw):
        runner = GraphRunner(self.dec, sizes, mode=mode, on_capture=self.on_capture, **kw)
        runner.capture()
        return runner

    def time(self, fn) -> dict:
        """Wall time of synchronised steps (step_us, p20, p80, n) and their event time."""
        return wall_timer("", self.budget(), event=True)(fn, {})

    def budget(self) -> Budget:
        """A row's sampling budget; its rotation on a quick CPU (bench.hostcpu), as the sweep's."""
        return Budget(self.cfg.steps, self.cfg.time_budget, pin=pin_factory(self.cfg.pin_cpu))

    def measure(self, mode: str, sizes, bs_list) -> list[dict]:
        """Step time of each batch when `sizes` are captured in `mode`. Only the graphs these
        batches route to are captured (the others would never replay here); a batch no graph
        covers runs eagerly through the runner's fallback, as an engine's would."""
        route = PaddingDispatcher(sizes if mode != "none" else [])
        pads = {bs: route.pad(bs) for bs in bs_list}
        key = lambda bs: ("eager", None, bs) if pads[bs] is None else (mode, pads[bs], bs)
        todo = [bs for bs in bs_list if key(bs) not in self.times]
        if todo:
            need = sorted({pads[b] for b in todo if pads[b]})
            runner = self.capture(need, mode if need else "none")
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "batch size", RuntimeWarning)
                    for bs in todo:
                        pads[bs] = runner.dispatcher.pad(bs) if need else None  # OOM skips
                        ran_as = "eager" if pads[bs] is None else mode
                        x = self.inputs(bs)
                        arm = Arm(lambda: runner.step_packed(x), lambda fn, row: self.time(fn))
                        self.times[key(bs)] = measure_row({ran_as: arm}, bs, pads[bs], ran_as,
                                                          lambda s: self.say("  " + s))
            finally:
                runner.close()
        return [timed_row(bs, pads[bs], "eager" if pads[bs] is None else mode,
                          self.times[key(bs)]) for bs in bs_list]

    def arm_timer(self, prefix: str, scale: float = 1.0):
        """The timer of one arm of a paired row (rows.Timer: sampled in rotation)."""
        return wall_timer(prefix, self.budget(), scale, event=True)

    def pair(self, bs_list) -> list[dict]:
        """Eager against one full graph per batch (captured exactly), sampled in rotation by
        rows.measure_row: each row's speedup is the median of paired ratios, with its bootstrap
        interval (speedup_ci) and `stable`. Where the decoder binds its steps (the triton
        backend on one GPU), the engine-eager arm joins the rotation as the sweep's does: the
        unfused plan's bound steps on the same weights and caches, what an engine's
        enforce_eager runs (engine_eager_speedup against the same graph). The eager and graph
        times join the lab's cache, so later experiments reuse them as `measure` would."""
        eager, full = self.capture([], "none"), self.capture(sorted(set(bs_list)), "full")
        rows = []
        try:
            for bs in bs_list:
                x, pad = self.inputs(bs), full.dispatcher.pad(bs)
                # each arm's logits of one step checked against eager's, as the sweep does
                arms = {"eager": Arm(lambda: eager.step_packed(x), self.arm_timer("eager_", 2.0)),
                        "graph": Arm(lambda: full.step_packed(x), self.arm_timer("graph_"),
                                     diff="max_abs_diff")}
                engine = self.engine_step(bs, x)
                if engine is not None:
                    arms["engine-eager"] = Arm(engine, self.arm_timer("engine_eager_"),
                                               diff="engine_eager_max_abs_diff")
                row = measure_row(arms, bs, pad, "full" if pad else "eager",
                                  lambda s: self.say("  " + s))
                for arm, key in (("eager", ("eager", None, bs)),
                                 ("graph", ("full", pad, bs) if pad else ("eager", None, bs))):
                    self.times.setdefault(key, {k: row.get(f"{arm}_{k}") for k in
                                                ("step_us", "p20", "p80", "n", "event_us")})
                rows.append(row)
        finally:
            full.close()
            eager.close()
        return rows

    def rotation(self, steps: dict, bs: int) -> dict:
        """Steps {prefix: step} sampled in rotation at bs by rows.measure_row ("eager_" with
        twice the share of the time cap, as in `pair`): the row has each prefix's step_us, p20,
        p80, n and event_us, against the "graph_" step every other's {prefix}speedup (its time
        over the graph step's; for "eager_", speedup) with its bootstrap interval, and each
        step's largest logit difference from the first step's ({prefix}max_abs_diff)."""
        arms = {p: Arm(fn, self.arm_timer(p, 2.0 if p == "eager_" else 1.0),
                       diff=None if i == 0 else f"{p}max_abs_diff")
                for i, (p, fn) in enumerate(steps.items())}
        return measure_row(arms, bs, None, "rotation", lambda s: self.say("  " + s))

    def engine_step(self, bs: int, x):
        """The engine-eager arm's step at bs on the packed inputs x (the unfused plan's bound
        step), or None where the decoder does not bind (the torch backend, a TP shard)."""
        dec = self.dec
        if not bound_steps(dec):     # the sweep's rule for which decoders bind
            return None
        if "plain" not in self.cache:
            self.cache["plain"] = dec.with_fusion(Fusion.UNFUSED)
        bound = self.cache["plain"].bind(bs)
        return lambda: bound.step_packed(x)

    def launch(self) -> dict:
        """The device's launch costs, bandwidth, matrix rate and kernel lines, as the sweep
        measures them (once per run)."""
        if "launch" not in self.cache:
            # with the kernel lines, as the sweep's model has them: without them the model
            # would price every kernel at the copy bandwidth alone
            self.cache["launch"] = measure_device_profile(self.dec, self.context,
                                                          self.cfg.time_budget, self.cfg.pin_cpu,
                                                          self.say)
        return self.cache["launch"]

    def gpu(self) -> str:
        return torch.cuda.get_device_name(self.dec.device)

    def pool_largest_first(self, ladder, ns) -> list[dict]:
        """Pool bytes of a shared pool holding the first n sizes, captured largest first."""
        key = ("pool", tuple(ladder), tuple(ns))
        if key not in self.cache:
            rows = []
            for n in ns:
                r = self.capture(ladder[:n])
                rows.append(dict(arm="shared, largest-first", n_sizes=n, largest_size=ladder[n - 1],
                                 pool_bytes=r.report["pool_bytes"]))
                r.close()
            self.cache[key] = rows
        return self.cache[key]


def build_decoder(cfg, max_batch: int, context: int):
    dec = ToyDecoder(cfg.shape, backend=cfg.backend, max_batch=max_batch,
                     max_seq=max_seq_for(context), dtype=torch_dtype(cfg.dtype), device="cuda",
                     seed=cfg.seed)
    dec.fill_cache(context)
    torch.cuda.synchronize()
    return dec


def free_memory() -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]
