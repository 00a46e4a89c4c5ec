"""Start-up cost, cold and warm: the compile arm's set-up with an empty and with a warm compile
cache, beside the graph arm's capture.

Each measurement is a fresh process (`python -m microbench.bench.startup --child CONFIG`), as
an engine's start-up is: it imports torch, builds the decoder, captures the graph arm's sizes
(engine.runner.GraphRunner: its warm-up JIT-compiles the Triton kernels) and sets up the compiled
arm at each batch size (bench.arms: compile, CUDA-graph trees' warm-up run and record), and
prints one JSON line. The parent points TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR at a new
empty folder for the first process (cold) and at the same folder again for the next ones (warm),
so Inductor's FX-graph and AOTAutograd caches and Triton's kernel cache are empty, then filled
by the cold process. Dynamo's tracing is not cached: a warm start still traces.

The run's `env` is where and how it was measured: the GPU, driver, clocks and versions as the
cold process recorded them, with the parent's own command line (`microbench startup ...`) and
start date, since the children's command is this module's `--child` line; that line is kept as
`child_command`.

The parent needs no torch; `run` (how a child runs), the child's command and the parent's argv
are arguments, so the orchestration is tested on the CPU with a fake child.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from microbench.bench.arms import COMPILED_ARMS
from microbench.bench.model_options import check_model_options
from microbench.engine.shapes import MAX_BATCH, PRESETS, ModelShape

CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
# the inductor counters that say whether a warm process hit the caches
CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                  ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))


# seed 004 (a blog post, June 2026): vLLM 0.20.2 starting Qwen3.5-9B-AWQ on an RTX 4060 Ti,
# torch.compile (Inductor) and graph capture together, with an empty and a warm compile cache
PUBLISHED = dict(cold_s=130.0, warm_s=16.0,
                 source="vLLM start-up of Qwen3.5-9B on an RTX 4060 Ti, compile and capture")


class StartupFailed(RuntimeError):
    """A start-up process failed or ran past its time limit; the message is one line."""


@dataclass(frozen=True)
class StartupConfig:
    preset: str = "opt-125m"
    bs: tuple = (1,)
    arm: str = "compile"
    context: int = 512
    dtype: str = "bfloat16"
    warm_runs: int = 1
    timeout_s: float = 600.0
    seed: int = 0
    out: str = "runs"

    def validate(self) -> "StartupConfig":
        """Raise ValueError('--option: what was wrong; what is allowed') on a bad value."""
        check_model_options(self.preset, self.context, self.dtype)
        if not self.bs or any(not 1 <= b <= MAX_BATCH for b in self.bs):
            raise ValueError(f"--bs: batch sizes are 1..{MAX_BATCH}, got {self.bs}")
        if self.arm not in COMPILED_ARMS:
            raise ValueError(f"--arm: {self.arm!r}; choose one of {', '.join(COMPILED_ARMS)}")
        if not 1 <= self.warm_runs <= 10:
            raise ValueError(f"--warm-runs: 1..10 warm processes, got {self.warm_runs}")
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout: seconds per process, > 0, got {self.timeout_s}")
        return self

    @property
    def shape(self) -> ModelShape:
        return PRESETS[self.preset]

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the parent: processes, caches, rows ---------------------------------------------------
def child_command(cfg: StartupConfig) -> list[str]:
    return [sys.executable, "-m", "microbench.bench.startup", "--child", json.dumps(cfg.to_dict())]


def cache_env(cache_dir: str, base: dict | None = None) -> dict:
    """The environment of a start-up process whose compile caches live under cache_dir."""
    env = dict(os.environ if base is None else base)
    env.update(TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
               TRITON_CACHE_DIR=os.path.join(cache_dir, "triton"),
               TORCHINDUCTOR_FX_GRAPH_CACHE="1", TORCHINDUCTOR_AUTOGRAD_CACHE="1")
    return env


def run_child(cmd: list[str], env: dict, timeout_s: float) -> dict:
    """Run one start-up process; its last stdout line is its JSON result, to which the
    process's own wall time (wall_s: from spawn to exit, imports included) is added."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StartupFailed(f"a start-up process ran past --timeout {timeout_s:g} s") from None
    wall = time.perf_counter() - t0
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if p.returncode != 0 or not lines:
        err = [l for l in p.stderr.splitlines() if l.strip()] or [f"exit code {p.returncode}"]
        raise StartupFailed(f"a start-up process failed: {err[-1][:300]}")
    try:
        res = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise StartupFailed(f"a start-up process printed no result: {lines[-1][:200]}") from None
    return dict(res, wall_s=wall)


def command_line(argv: list[str]) -> str:
    """argv as a run records its command (bench.env.environment's form: the program's name,
    then its arguments)."""
    return " ".join([Path(argv[0]).name] + list(argv[1:])) if argv else ""


def measure_startup(cfg: StartupConfig, run=run_child, command=None, say=None,
                    argv=None) -> dict:
    """One cold process then cfg.warm_runs warm ones on one new cache folder (removed after);
    returns the run dict (config, env, rows: one per process, summary). command: the child's
    command (default child_command(cfg)); argv: the parent's (default sys.argv), which the
    run's env records as its command."""
    say = say or (lambda s: None)
    cfg.validate()
    cmd = command or child_command(cfg)
    parent = dict(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  command=command_line(sys.argv if argv is None else argv))
    rows, env = [], {}
    with tempfile.TemporaryDirectory(prefix="microbench-startup-") as d:
        for i in range(1 + cfg.warm_runs):
            cache = "cold" if i == 0 else "warm"
            say(f"{cache} start-up {i if i else ''}".rstrip() + f" (caches in {d})")
            res = run(cmd, cache_env(d), cfg.timeout_s)
            child_env = res.pop("env", None)
            env = env or child_env or {}
            rows.append(startup_row(cache, res))
            say(f"  compile set-up {rows[-1]['compile_s']:.1f} s, graph capture "
                f"{rows[-1]['capture_s']:.1f} s, process {rows[-1]['wall_s']:.1f} s")
    return dict(kind="startup", config=cfg.to_dict(), env={**env, **parent},
                child_command=command_line(cmd), rows=rows, summary=summarize(rows),
                published=PUBLISHED)


def startup_row(cache: str, res: dict) -> dict:
    """A process's result as a row (field order is the CSV's column order)."""
    setup = {int(b): s for b, s in (res.get("compile_setup_s") or {}).items()}
    counters = res.get("cache_counters") or {}
    return dict(cache=cache, wall_s=res["wall_s"], import_s=res.get("import_s"),
                build_s=res.get("build_s"), capture_s=res["capture_s"],
                compile_s=sum(setup.values()), compile_setup_s=setup,
                fxgraph_cache_hit=counters.get("fxgraph_cache_hit"),
                fxgraph_cache_miss=counters.get("fxgraph_cache_miss"),
                autograd_cache_hit=counters.get("autograd_cache_hit"),
                autograd_cache_miss=counters.get("autograd_cache_miss"),
                cudagraph_skips=res.get("cudagraph_skips"))


def summarize(rows: list[dict]) -> dict:
    """Cold against the median warm process: compile set-up, graph capture, whole process."""
    cold = rows[0]
    warm = sorted(rows[1:], key=lambda r: r["compile_s"])
    w = warm[len(warm) // 2] if warm else None
    out = dict(cold_compile_s=cold["compile_s"], cold_capture_s=cold["capture_s"],
               cold_wall_s=cold["wall_s"])
    if w is not None:
        out.update(warm_compile_s=w["compile_s"], warm_capture_s=w["capture_s"],
                   warm_wall_s=w["wall_s"],
                   compile_cold_over_warm=cold["compile_s"] / w["compile_s"]
                   if w["compile_s"] > 0 else None)
    return out


# ---- the child: one start-up, measured -----------------------------------------------------
def child_measure(cfg: StartupConfig) -> dict:
    """In a fresh process: import, build, capture the graph arm, set up the compiled arm."""
    t0 = time.perf_counter()
    import torch

    from microbench.bench.arms import compiled_arm, inductor_cudagraph_skips
    from microbench.bench.env import environment
    from microbench.bench.inputs import step_inputs
    from microbench.bench.sweep_config import max_seq_for
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.runner import GraphRunner
    from microbench.engine.shapes import torch_dtype
    dev = torch.device("cuda")
    torch.cuda.init()
    t1 = time.perf_counter()
    dec = ToyDecoder(cfg.shape, max_batch=max(cfg.bs), max_seq=max_seq_for(cfg.context),
                     dtype=torch_dtype(cfg.dtype), device=dev, seed=cfg.seed)
    dec.fill_cache(cfg.context)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    runner = GraphRunner(dec, cfg.bs, mode="full")
    capture_s = runner.capture()["capture_s"]
    runner.close()
    compiled = compiled_arm(cfg.arm, dec)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    for b in cfg.bs:
        compiled.prepare(*step_inputs(cfg.shape.vocab, b, cfg.context, dev, gen))
    from torch._dynamo.utils import counters
    return dict(import_s=t1 - t0, build_s=t2 - t1, capture_s=capture_s,
                compile_setup_s={str(b): s for b, s in compiled.setup_s.items()},
                cudagraph_skips=inductor_cudagraph_skips(),
                cache_counters={k: int(counters[g].get(k, 0)) for g, k in CACHE_COUNTERS},
                env=environment(dev))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--child":
        print("usage: python -m microbench.bench.startup --child CONFIG_JSON", file=sys.stderr)
        return 2
    d = json.loads(argv[1])
    cfg = StartupConfig(**dict(d, bs=tuple(d["bs"]))).validate()
    print(json.dumps(child_measure(cfg), default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
