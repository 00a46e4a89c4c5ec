"""The generation loop: N decode steps per sequence with the context growing, eager against
graphed, end-to-end tokens per second as vLLM's `benchmark_latency` reports them.

One generation of `bs` sequences after a prompt of P tokens:

    step i = 0..N-1:  the host batch (tokens, positions P + i, slots 0..bs-1) is copied to the
                      device; the step runs (eager, or the graph runner: padded replay or eager
                      fallback); greedy sampling (argmax) picks each sequence's next token, and
                      the tokens are copied back to the host, which waits for them, as an
                      engine's sampler does before it can build the next step's batch.

Each step's wall time runs from the start of its host work to its tokens on the host, so the N
step times add up to the generation's latency. Tokens per second = bs * N / latency.

Prefill. The toy has no prefill kernel. `fill` (the default) writes random K and V for the
prompt's positions (ToyDecoder.fill_cache) and starts from seeded random tokens: every decode
step then reads and writes exactly the bytes it would after a real prompt, and no prefill time is
mixed into the figures. `steps` runs the prompt token by token through eager steps (timed apart,
as `prefill_ms`), so the cache holds what the model computed and the first token is sampled from
the prompt; its cost is P eager decode steps, which is not what an engine's one batched prefill
costs, so it is never added to the decode latency. Either way the latency here is decode only,
where vLLM's `benchmark_latency` includes the prefill.

The eager arm runs bound steps where the decoder has them (triton backend on CUDA:
ToyDecoder.bind, an engine's eager step at the launchers' own cost, as the sweep's eager arm);
the graph arm is the graph runner, whose fallback above its ladder is the decoder's own step.

Eager and graphed generations alternate (the order flips every repeat), so the host's drift hits
both; the speedup is the median of the paired ratios of their latencies, with its bootstrap
interval (stats.paired_ratio).
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from microbench.bench.env import environment
from microbench.bench.model_options import check_batch_sizes, check_full_max_size
from microbench.bench.sweep_config import checked_ladder, max_seq_for
from microbench.bench.timing import summarize
from microbench.engine.decoder import BACKENDS, ToyDecoder
from microbench.engine.ladders import resolve_ladder
from microbench.engine.runner import MODES, GraphRunner
from microbench.engine.shapes import DTYPE_NAMES, MAX_CONTEXT, PRESETS, torch_dtype
from microbench.stats import paired_ratio

PREFILLS = ("fill", "steps")


@dataclass(frozen=True)
class GenerateConfig:
    bs: tuple = (1, 8, 32)
    preset: str = "llama-1b"
    input_len: int = 32          # prompt tokens P, cached before the first decode step
    output_len: int = 128        # decode steps N per generation (one token per sequence each)
    mode: str = "full"
    ladder: str = "vllm"
    dtype: str = "bfloat16"
    backend: str = "triton"
    repeats: int = 10            # timed generations per arm and batch size
    warmup: int = 2              # untimed generations per arm first
    prefill: str = "fill"
    seed: int = 0
    out: str = "runs"
    # full_and_piecewise: the largest size the full pass captures (GraphRunner full_max_size)
    full_max_size: int | None = None

    def validate(self) -> "GenerateConfig":
        """Raise ValueError('--option: what was wrong; what is allowed') on a bad value."""
        check_batch_sizes(self.bs)
        for name, v, allowed in (("preset", self.preset, PRESETS), ("mode", self.mode, MODES),
                                 ("dtype", self.dtype, DTYPE_NAMES),
                                 ("backend", self.backend, BACKENDS),
                                 ("prefill", self.prefill, PREFILLS)):
            if v not in allowed:
                raise ValueError(f"--{name}: unknown {v!r}; choose one of {', '.join(allowed)}")
        for name, v, lo in (("input-len", self.input_len, 1), ("output-len", self.output_len, 1),
                            ("repeats", self.repeats, 1), ("warmup", self.warmup, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"--{name}: must be an integer >= {lo}, got {v!r}")
        if self.input_len + self.output_len > MAX_CONTEXT:
            raise ValueError(f"--output-len: input {self.input_len} + output {self.output_len} "
                             f"tokens exceed the context limit {MAX_CONTEXT}")
        checked_ladder(self.ladder, max(self.bs))
        check_full_max_size(self.mode, self.full_max_size)
        return self

    def ladder_sizes(self) -> list[int]:
        return resolve_ladder(self.ladder, max(self.bs))

    def runner_kw(self) -> dict:
        """The GraphRunner options beyond the mode this config sets."""
        return {} if self.full_max_size is None else dict(full_max_size=self.full_max_size)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- what generate and serve share: an engine's host batch and its decode step -------------
class Views(NamedTuple):
    """One batch size's buffers in a HostBatch: the host and device batches [3, bs], the device
    rows a step reads and the host rows the loop writes."""
    bs: int
    host: torch.Tensor
    dev: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    host_tokens: torch.Tensor
    host_positions: torch.Tensor


class HostBatch:
    """An engine's persistent input batch: per batch size, tokens, positions and slots as the
    rows of one contiguous host tensor [3, bs] (pinned on CUDA, so the copy is one async
    transfer), copied to a device twin before each step; the sampled tokens come back into its
    token row. Slots are 0..bs-1; positions start at `position`. Buffers are made once per
    batch size (allocating or slicing costs the host microseconds a step)."""

    def __init__(self, device, position: int = 0):
        self.device, self.position = torch.device(device), position
        self._views: dict[int, Views] = {}

    def views(self, bs: int) -> Views:
        v = self._views.get(bs)
        if v is None:
            h = torch.zeros(3, bs, dtype=torch.long, pin_memory=self.device.type == "cuda")
            h[1] = self.position
            h[2] = torch.arange(bs)
            d = h.to(self.device, copy=True)
            v = self._views[bs] = Views(bs, h, d, d[0], d[1], d[2], h[0], h[1])
        return v


def eager_step(dec):
    """The decoder's own step on a HostBatch's device rows."""
    return lambda v: dec.step(v.tokens, v.positions, v.slots)


def eager_arm(dec, sizes) -> tuple:
    """(the eager arm's step, whether it runs bound steps). Where the decoder has them (the
    triton backend on CUDA), bound steps per batch size (ToyDecoder.bind: checks, outputs and
    launch binding done once, as an engine's eager step has them, and as the sweep's eager arm
    runs); the decoder's own step otherwise. Binding records one step at the scratch slot."""
    if dec.backend != "triton" or dec.device.type != "cuda":
        return eager_step(dec), False
    bound = {bs: dec.bind(bs) for bs in sorted(set(sizes))}
    return (lambda v: bound[v.bs].step_packed(v.dev)), True


def runner_step(runner):
    """The graph runner's step on a HostBatch's device batch (one copy into its static rows)."""
    return lambda v: runner.step_packed(v.dev)


def decode_step(step, v: Views) -> None:
    """One engine step: the host batch to the device, the step, greedy sampling, and the sampled
    tokens back into the host batch's token row (a blocking copy: the host waits for them)."""
    v.dev.copy_(v.host, non_blocking=True)
    v.host_tokens.copy_(step(v).argmax(-1))


def generate_once(step, batch: HostBatch, bs: int, first_tokens, input_len: int, n: int):
    """One generation of n steps from positions input_len on; returns (step times in ns,
    the generated tokens [n, bs] on the host)."""
    v = batch.views(bs)
    v.host_tokens.copy_(first_tokens)
    v.host_positions.fill_(input_len)
    tokens = torch.empty(n, bs, dtype=torch.long)
    ns = [0] * n
    clock = time.perf_counter_ns
    t_prev = clock()
    for i in range(n):
        decode_step(step, v)
        tokens[i] = v.host_tokens
        v.host_positions.add_(1)
        t = clock()
        ns[i], t_prev = t - t_prev, t
    return ns, tokens


def interleaved(arms: dict, warmup: int, repeats: int, run_one) -> dict:
    """run_one(step) for each arm, warmup + repeats times, the arms' order flipped every
    repeat; returns {arm: [result of each timed repeat]}. The garbage collector stays out of
    the timed part, as settle keeps it out of timing samples."""
    out = {a: [] for a in arms}
    names = list(arms)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + repeats):
            for a in (names if r % 2 == 0 else names[::-1]):
                res = run_one(arms[a])
                if r >= warmup:
                    out[a].append(res)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


# ---- the run ---------------------------------------------------------------------------------
def run_generate(cfg: GenerateConfig, device="cuda", on_progress=None, on_run=None,
                 on_capture=None, make_runner=GraphRunner) -> dict:
    """Run the generation loop at each batch size; returns the run dict (config, env, capture,
    rows). on_run(run) whenever it changes (to save it), on_progress(text) for status lines,
    on_capture for the runner's capture progress (GraphRunner's); make_runner(decoder, sizes,
    mode=, on_capture=) builds the graph arm (a fake in CPU tests)."""
    cfg.validate()
    say = on_progress or (lambda s: None)
    save = on_run or (lambda r: None)
    dev = torch.device(device)
    t_start = time.perf_counter()
    shape = PRESETS[cfg.preset]
    ladder = cfg.ladder_sizes() if cfg.mode != "none" else []
    run = dict(kind="generate", config=cfg.to_dict(), env=environment(dev), ladder=ladder,
               shape=shape.to_dict(), rows=[], interrupted=False)
    max_batch = max(max(cfg.bs), max(ladder, default=1))
    say(f"building {cfg.preset} ({shape.n_params / 1e6:.0f}M params, {cfg.dtype}), max batch "
        f"{max_batch}, prompt {cfg.input_len} + {cfg.output_len} generated tokens")
    dec = _decoder(cfg, max_batch, dev)
    runner = None
    try:
        if cfg.prefill == "fill":
            dec.fill_cache(cfg.input_len)
        runner = make_runner(dec, ladder, mode=cfg.mode, on_capture=on_capture, **cfg.runner_kw())
        run["capture"] = runner.capture()
        batch = HostBatch(dev)
        arms = {}
        arms["eager"], run["eager_bound"] = eager_arm(dec, cfg.bs)
        if cfg.mode != "none":
            arms["graph"] = runner_step(runner)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        for bs in cfg.bs:
            run["rows"].append(_measure_bs(cfg, dec, runner, batch, arms, bs, gen, say))
            save(run)
    except KeyboardInterrupt:
        run["interrupted"] = True
    finally:
        if runner is not None:
            run["runner_counts"] = dict(runner.counts)
            if cfg.mode != "none":
                runner.close()
        run["wall_s"] = time.perf_counter() - t_start
        save(run)
    return run


def _decoder(cfg: GenerateConfig, max_batch: int, dev) -> ToyDecoder:
    return ToyDecoder(PRESETS[cfg.preset], backend=cfg.backend, max_batch=max_batch,
                      max_seq=max_seq_for(cfg.input_len + cfg.output_len - 1),
                      dtype=torch_dtype(cfg.dtype), device=dev, seed=cfg.seed)


def _measure_bs(cfg, dec, runner, batch, arms, bs, gen, say) -> dict:
    """One batch size's row: the prompt, then the arms' generations interleaved."""
    # what the runner runs a uniform decode step of bs on: under full_and_piecewise a full
    # graph, a piecewise one (the size is above the full pass's cap) or eager
    ran_as, padded = runner.route(bs)
    row = dict(bs=bs, padded_bs=padded, ran_as=ran_as,
               input_len=cfg.input_len, output_len=cfg.output_len, repeats=cfg.repeats)
    first = torch.randint(dec.shape.vocab, (bs,), generator=gen)
    if cfg.prefill == "steps":
        first, row["prefill_ms"] = _prefill_steps(dec, arms["eager"], batch, bs, cfg.input_len,
                                                  gen)
    say(f"bs {bs}: {cfg.warmup} + {cfg.repeats} generations of {cfg.output_len} steps per arm")
    before = dict(runner.counts)
    res = interleaved(arms, cfg.warmup, cfg.repeats,
                      lambda step: generate_once(step, batch, bs, first, cfg.input_len,
                                                 cfg.output_len))
    for arm, gens in res.items():
        row.update(arm_fields(f"{arm}_", [ns for ns, _ in gens], bs))
    row.update(paired_speedup(res))
    if "graph" in res:
        e, g = res["eager"][0][1], res["graph"][0][1]
        row["tokens_match"] = float((e == g).float().mean())
        row.update({f"graph_{k}": runner.counts[k] - before[k]
                    for k in ("replays", "fallbacks", "padded_rows")})
    return row


def _prefill_steps(dec, step, batch: HostBatch, bs: int, input_len: int, gen):
    """The prompt token by token through the eager arm's steps at positions 0..P-1; returns
    (the first generated token of each sequence, the prefill's wall milliseconds)."""
    prompt = torch.randint(dec.shape.vocab, (input_len, bs), generator=gen)
    v = batch.views(bs)
    t0 = time.perf_counter()
    for p in range(input_len):
        v.host_tokens.copy_(prompt[p])
        v.host_positions.fill_(p)
        decode_step(step, v)
    return v.host_tokens.clone(), (time.perf_counter() - t0) * 1e3


def arm_fields(prefix: str, gens: list[list[int]], bs: int) -> dict:
    """An arm's row fields from its timed generations' step times (ns): the generation latency
    (ms; median, p20, p80), tokens per second at the median latency, the step time (us) over
    every step of every generation, and the median first and last step (shortest and longest
    context)."""
    lat = summarize([sum(ns) / 1e6 for ns in gens])
    steps = summarize([t / 1e3 for ns in gens for t in ns])
    n = len(gens[0])
    return {f"{prefix}latency_ms": lat.median, f"{prefix}latency_p20": lat.p20,
            f"{prefix}latency_p80": lat.p80, f"{prefix}tok_s": bs * n / (lat.median / 1e3),
            f"{prefix}step_us": steps.median, f"{prefix}step_p20": steps.p20,
            f"{prefix}step_p80": steps.p80,
            f"{prefix}first_step_us": summarize([ns[0] / 1e3 for ns in gens]).median,
            f"{prefix}last_step_us": summarize([ns[-1] / 1e3 for ns in gens]).median}


def paired_speedup(res: dict) -> dict:
    """Eager latency over graph latency, repeat by repeat: the median ratio and its bootstrap
    interval (stats.paired_ratio; None without a graph arm)."""
    if "graph" not in res:
        return dict(speedup=None, speedup_ci=None)
    r = paired_ratio([sum(ns) for ns, _ in res["eager"]], [sum(ns) for ns, _ in res["graph"]])
    return dict(speedup=r["median"], speedup_ci=r["ci"])
