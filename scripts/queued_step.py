"""What an eager step costs the GPU beyond its graph step, with the host out of the way.

usage: python scripts/queued_step.py --preset llama-8b --bs 1,16,64 [--context 512] [--rounds 40]

The sweep's eager step is the decoder's bound launches (engine.bound, its `eager` arm); the
model prices it as the graph's kernels plus, per kernel the GPU meets queued in a stream, the
stream gap timed on a tiny Triton kernel (the footer's `+... us each over a graph node`). This
builds the sweep's decoder (its cache filled to the context) and captures a graph at each batch
size; per batch size it binds the step, checks that one bound step gives the graph's logits, and
times three arms with CUDA events, in rotation in one process (bench.timing.interleave; the
graph arm behind a sleep as long as the queued arm's):

  graph    the graph's replay, enqueued behind a sleep kernel
  queued   the bound step's launches, enqueued behind a sleep kernel that outlasts their
           enqueueing (bench.timing.queued_sampler): the GPU meets every kernel already
           queued, so the time is the GPU's alone
  paced    the bound step's launches with the GPU idle, as the sweep's eager step runs them
           (without its input copy): the GPU waits wherever the host has not yet launched the
           next kernel

It prints each arm's median with its 95% interval and, from the paired samples of each round:
queued less graph, per kernel (what stream launches cost the GPU over graph nodes on the step's
own kernels, beside the tiny kernel's gap timed in the same process), and paced less queued,
per kernel (what the host's pacing adds). Inputs stay in place: no arm copies them in, and the
graph step's replay call is off the GPU's clock. Needs a CUDA GPU."""
import sys

import click

from microbench.engine.shapes import PRESETS


def parse_batches(text: str) -> list[int]:
    """'1,16,64' -> [1, 16, 64]; a one-line error for anything but distinct sizes in 1..512."""
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(not 1 <= b <= 512 for b in sizes) or len(set(sizes)) != len(sizes):
        raise click.BadParameter(f"{text!r} is not a comma-separated list of distinct batch "
                                 "sizes in 1..512 (e.g. 1,16,64)", param_hint="--bs")
    return sizes


def logits_match(graph, eager, rel: float = 1e-2) -> str | None:
    """None when the bound step's logits are the graph's (largest difference within `rel` of the
    largest logit: the same kernels on the same inputs); else what differs, in one line."""
    import torch
    if graph.shape != eager.shape:
        return f"logits of shape {tuple(eager.shape)} against the graph's {tuple(graph.shape)}"
    g, e = graph.float(), eager.float()
    if not (torch.isfinite(g).all() and torch.isfinite(e).all()):
        return "logits not finite"
    diff, scale = (g - e).abs().max().item(), g.abs().max().item()
    if diff > rel * max(scale, 1e-6):
        return f"logits differ by {diff:.3g} (largest logit {scale:.3g})"
    return None


def tiny_gap_us(budget_s: float = 0.3) -> tuple[float, float]:
    """(GPU us per tiny Triton kernel queued in a stream, the same as a graph node): the sweep's
    `launch` figures for the `triton` launcher (bench.launch), timed here."""
    from microbench.bench.launch import launchers
    from microbench.bench.timing import gpu_time_us, graph_of, queued_gpu_time_us
    fn = launchers("cuda")["triton"]
    node = gpu_time_us(graph_of(fn, 100).replay, inner=10, budget_s=budget_s).median / 100
    return queued_gpu_time_us(fn, inner=100, budget_s=budget_s).median, node


def build(preset: str, batches: list[int], context: int):
    """The sweep's decoder for `preset` (max batch the largest of `batches`, its cache filled to
    `context`) and a GraphRunner with a full graph captured at each batch size."""
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.runner import GraphRunner
    from microbench.engine.shapes import max_seq_for
    dec = ToyDecoder(PRESETS[preset], max_batch=max(batches), max_seq=max_seq_for(context),
                     device="cuda")
    dec.fill_cache(context)
    runner = GraphRunner(dec, batches, mode="full")
    runner.capture()
    return dec, runner


def measure(dec, runner, bs: int, context: int, rounds: int) -> dict:
    """The three arms' samples at one batch size (us per step), the step's kernel count, and
    the host's time to enqueue one bound step in the paced arm's samples. A bound step whose
    logits are not the graph's stops with a one-line error."""
    import time

    import torch

    from microbench.bench.inputs import step_inputs
    from microbench.bench.timing import interleave, queued_sampler
    t, p, s = step_inputs(dec.shape.vocab, bs, context, "cuda",
                          torch.Generator("cuda").manual_seed(bs))
    graph_out = runner.step(t, p, s).clone()
    bound = dec.bind(bs)
    eager_out = bound.step(t, p, s)
    torch.cuda.synchronize()
    problem = logits_match(graph_out, eager_out)
    if problem:
        raise click.ClickException(f"bs {bs}: the bound step is not the graph's: {problem}")
    graphs = runner.graphs["full"][bs].graphs

    def replay():
        for g in graphs:
            g.replay()

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host_us = []

    def paced():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        bound.run()
        host_us.append((time.perf_counter() - t0) * 1e6)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3

    for _ in range(3):          # warm: every kernel compiled, the clocks up
        replay()
        bound.run()
    torch.cuda.synchronize()
    queued = queued_sampler(bound.run, inner=1)
    queued()                    # finds the sleep that outlasts a bound step's enqueueing ...
    samplers = {"graph": queued_sampler(replay, inner=1, sleep_cycles=queued.cycles[0]),
                "queued": queued, "paced": paced}   # ... and the graph arm sleeps as long
    xs, _ = interleave(samplers, min_rounds=rounds, max_rounds=rounds, budget_s=1e9)
    return dict(kernels=len(bound), host_us=host_us, **xs)


def report(preset: str, bs: int, context: int, r: dict, tiny: tuple[float, float]) -> list[str]:
    """The lines printed for one batch size's result `r` (measure's), with the tiny kernel's
    (queued, node) us."""
    from microbench.stats import median_ci
    n = r["kernels"]
    lines = [f"{preset} bs {bs}: {n} kernels a step, context {context}, {len(r['graph'])} rounds;"
             " the bound step's logits are the graph's"]
    for arm, what in (("graph", "graph replay, queued behind a sleep"),
                      ("queued", "eager (bound launches), queued behind a sleep"),
                      ("paced", "eager (bound launches), paced by the host")):
        m, lo, hi = median_ci(r[arm])
        lines.append(f"  {arm:<7} {m:9.1f} us ({lo:.1f}-{hi:.1f})  {what}")
    h = median_ci(r["host_us"])
    lines.append(f"  host    {h[0]:9.1f} us ({h[1]:.1f}-{h[2]:.1f})  enqueueing one bound step "
                 "(paced arm)")
    for a, b, what in (("queued", "graph", "the GPU's own cost of stream launches over graph "
                        "nodes"),
                       ("paced", "queued", "what the host's pacing adds")):
        m, lo, hi = median_ci([x - y for x, y in zip(r[a], r[b])])
        lines.append(f"  {a} - {b}: {m:.1f} us ({lo:.1f}-{hi:.1f}), {m / n:.2f} us a kernel "
                     f"({lo / n:.2f}-{hi / n:.2f}): {what}")
    q, node = tiny
    lines.append(f"  tiny Triton kernel: {q:.2f} us queued, {node:.2f} us a graph node: gap "
                 f"{q - node:.2f} us a kernel (the model's stream gap)")
    return lines


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="llama-8b", show_default=True)
@click.option("--bs", "batches", default="1,16,64", show_default=True,
              callback=lambda ctx, param, v: parse_batches(v),
              help="comma-separated batch sizes, each with its own graph and bound step")
@click.option("--context", type=click.IntRange(1, 8192), default=512, show_default=True)
@click.option("--rounds", type=click.IntRange(4, 400), default=40, show_default=True)
def main(preset, batches, context, rounds):
    import torch
    if not torch.cuda.is_available():
        raise click.UsageError("queued_step times steps on a CUDA GPU; none is visible")
    from microbench.bench.hostcpu import on_quick_cpu
    dec, runner = build(preset, batches, context)
    with on_quick_cpu():
        tiny = tiny_gap_us()
        for bs in batches:
            try:
                r = measure(dec, runner, bs, context, rounds)
            except RuntimeError as e:   # a host too slow for the longest sleep kernel
                raise click.ClickException(f"bs {bs}: {e}") from None
            click.echo("\n".join(report(preset, bs, context, r, tiny)))
    runner.close()


if __name__ == "__main__":
    sys.exit(main())
