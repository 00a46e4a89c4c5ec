"""`microbench reproduce`: the selected experiments (bench.phenomena) run on one shared decoder,
each judged as it ends, into the run dict.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass

import torch

from microbench.bench.env import environment, require_cuda
from microbench.bench.lab import Lab, build_decoder, free_memory
from microbench.bench.model_options import check_model_options
from microbench.bench.phenomena import EXPERIMENTS, NAMES
from microbench.bench.sweep_config import DEFAULT_BS
from microbench.engine.memory import check_utilization
from microbench.engine.shapes import MAX_BATCH, PRESETS, ModelShape


@dataclass(frozen=True)
class ReproduceConfig:
    names: tuple = NAMES
    preset: str = "opt-125m"
    bs: tuple = DEFAULT_BS
    context: int = 512
    dtype: str = "bfloat16"
    steps: int = 5
    time_budget: float = 0.5
    memory_budget_gib: float | None = None
    gpu_memory_utilization: float | None = None
    backend: str = "triton"
    seed: int = 0
    out: str = "runs"
    progress: bool = False
    pin_cpu: bool = True   # each row's rotation on a quick CPU (bench.hostcpu)

    def validate(self) -> "ReproduceConfig":
        """Raise ValueError('--option: what was wrong; what is allowed') on a bad value."""
        bad = [n for n in self.names if n not in EXPERIMENTS]
        if bad or not self.names:
            what = f"unknown experiment {bad[0]!r}" if bad else "no experiment named"
            raise ValueError(f"NAMES: {what}; choose from {', '.join(NAMES)}")
        check_model_options(self.preset, self.context, self.dtype)
        if not self.bs or any(not 1 <= b <= MAX_BATCH for b in self.bs):
            raise ValueError(f"--bs: batch sizes are 1..{MAX_BATCH}, got {self.bs}")
        if self.steps < 1 or not self.time_budget > 0:
            raise ValueError("--steps must be >= 1 and --time-budget > 0")
        if self.memory_budget_gib is not None and not self.memory_budget_gib > 0:
            raise ValueError(f"--memory-budget: must be > 0 GiB, got {self.memory_budget_gib}")
        if self.memory_budget_gib is not None and "memory-headroom" not in self.names:
            raise ValueError(f"--memory-budget: only memory-headroom reads it, and the run names "
                             f"{', '.join(self.names)}; add memory-headroom or drop the option")
        if self.gpu_memory_utilization is not None:
            check_utilization(self.gpu_memory_utilization)
            if "memory-headroom" not in self.names:
                raise ValueError(f"--gpu-memory-utilization: only memory-headroom reads it, and "
                                 f"the run names {', '.join(self.names)}; add memory-headroom or "
                                 f"drop the option")
            if self.memory_budget_gib is not None:
                raise ValueError("--gpu-memory-utilization: not with --memory-budget (one budget)")
        return self

    @property
    def shape(self) -> ModelShape:
        return PRESETS[self.preset]

    def ordered_names(self) -> list[str]:
        """Selected experiments in the canonical order (earlier ones leave timings to reuse)."""
        return [n for n in NAMES if n in self.names]

    def max_batch(self) -> int:
        return max(EXPERIMENTS[n].max_batch(self) for n in self.names)

    def to_dict(self) -> dict:
        return asdict(self)


def make_entry(name: str, rows: list, info: dict, wall_s: float = 0.0, error: str | None = None,
               judge=None) -> dict:
    """A phenomenon entry of run.json: the experiment's texts, its verdict by judge(name,
    entry) (analysis.verdicts.judge; none without it), rows and info. Incomplete measurements
    (an arm missing) or an error give held = False, never a guess."""
    exp = EXPERIMENTS[name]
    entry = dict(name=name, expected=exp.expected, measured="", held=False, why="", source=exp.source,
                 method=exp.method, notes=[], derived={}, rows=rows, info=info, wall_s=wall_s)
    if error:
        entry.update(measured=f"failed: {error.strip().splitlines()[-1]}", why="the experiment failed",
                     error=error)
        return entry
    if judge is None:
        return entry
    try:
        entry.update(judge(name, entry))
    except (KeyError, StopIteration, TypeError, ValueError, ZeroDivisionError, IndexError) as e:
        entry.update(measured=f"incomplete measurements ({type(e).__name__}: {e})",
                     why="incomplete measurements")
    entry["held"] = bool(entry["held"])
    return entry


def run_reproduce(cfg: ReproduceConfig, on_progress=None, on_entry=None, on_run=None,
                  judge=None, predict=None, on_capture=None) -> dict:
    """Run the selected experiments on one shared decoder; returns the run dict. on_entry(entry)
    after each experiment, on_run(run) whenever the run changes (to save it); judge
    (analysis.verdicts.judge) gives each entry its verdict, predict
    (analysis.beside.predict_fade) the model's columns of speedup-fade; on_capture is each
    graph runner's (GraphRunner's on_capture)."""
    say = on_progress or (lambda s: None)
    require_cuda("reproduce")
    cfg.validate()
    t_start = time.perf_counter()
    run = dict(kind="reproduce", config=cfg.to_dict(), env=environment(torch.device("cuda")),
               shape=cfg.shape.to_dict(), phenomena=[], interrupted=False)
    mb = cfg.max_batch()
    say(f"building {cfg.preset} ({cfg.shape.n_params / 1e6:.0f}M params, {cfg.dtype}), "
        f"max batch {mb}, context {cfg.context}")
    dec = build_decoder(cfg, mb, cfg.context)
    lab = Lab(cfg, dec, cfg.context, say, predict, on_capture=on_capture)
    free, total = free_memory(), torch.cuda.mem_get_info()[1]
    lab.cache["free_after_decoder"] = free
    kv = sum(c.numel() * c.element_size() for c in dec.k_cache + dec.v_cache)
    run["memory"] = dict(total_bytes=total, free_after_decoder_bytes=free,
                         weight_bytes=dec.weight_bytes(), kv_cache_bytes=kv, max_batch=mb)
    run["build_s"] = time.perf_counter() - t_start
    for name in cfg.ordered_names():
        say(f"== {name}")
        t0, res, err = time.perf_counter(), dict(rows=[], info={}), None
        try:
            res = EXPERIMENTS[name].run(lab)
        except KeyboardInterrupt:
            run["interrupted"] = True
            break
        except Exception:  # one failed experiment must not lose the others' measurements
            err = traceback.format_exc()
            free_memory()
        entry = make_entry(name, res["rows"], res["info"], time.perf_counter() - t0, err, judge)
        run["phenomena"].append(entry)
        if on_entry:
            on_entry(entry)
        if on_run:
            on_run(run)
    run["wall_s"] = time.perf_counter() - t_start
    if on_run:
        on_run(run)
    return run
