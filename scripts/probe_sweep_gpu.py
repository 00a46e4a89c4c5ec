"""Probe: why a sweep's bs-1 llama-1b graph step reads more GPU time (1018-1019 us in the runs of
4747730, 0ba83cf and 38d6d73) than the same step in the probes (990-1000 us with the input copy).
One process, one probe runner: its step (the replay alone and step_packed, GPU back to back, and
synchronised) measured first, then after each of the sweep's phases in the sweep's order
(launch costs with cupy, op host costs, kernel lines, eager steps, the profiler), so the phase
after which it changes is named. PROBE_WHOLE=1: a whole run_sweep at bs 1 in between instead."""
import os
import subprocess
import tempfile
import time

import torch

from microbench.bench import launch as LA
from microbench.engine.runner import GraphRunner
from microbench.bench.sweep import SweepConfig, run_sweep
from microbench.bench.timing import gpu_time_us, step_time_us
from probe_common import CONTEXT, bs1_decoder

dev = torch.device("cuda")
copy = LA.copy_bandwidth(dev, budget_s=0.3)["bytes_per_s"]
print(f"copy bandwidth {copy / 1e12:.3f} TB/s", flush=True)
dec, x, nb = bs1_decoder("llama-1b", dev)
runner = GraphRunner(dec, [1], mode="full", progress=False)
runner.capture()
g = runner.entries[1].graphs[0]
inp = runner._rows(1)[0]


def smi():
    """SM clock, temperature, power and active throttle reasons now (nvidia-smi)."""
    q = "clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active"
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi: {e}"


def probe(label):
    before = smi()
    rep = gpu_time_us(g.replay, inner=10, budget_s=0.6).median
    gpu = gpu_time_us(lambda: runner.step_packed(x), inner=10, budget_s=0.6).median
    _, wall = step_time_us(lambda: runner.step_packed(x), inner=10, sync_each=True, budget_s=0.6)
    print(f"{label:40s}: replay GPU {rep:7.1f} us, step_packed GPU {gpu:7.1f} us, synced step "
          f"{wall.median:7.1f} us ({nb / (wall.median * 1e-6) / copy:.1%}); smi before [{before}] "
          f"after [{smi()}]", flush=True)


probe("first")
probe("first (again)")
if os.environ.get("PROBE_WHOLE"):
    with tempfile.TemporaryDirectory() as tmp:
        run = run_sweep(SweepConfig(bs=(1,), preset="llama-1b", out=tmp))
    row = run["rows"][0]
    print(f"sweep at bs 1: graph GPU {row['graph_gpu_us']:7.1f} us, synced step {row['graph_step_us']:7.1f} us",
          flush=True)
    probe("after the sweep")
elif os.environ.get("PROBE_PART"):
    # one part of measure_launch, in a process of its own (its effect stays)
    from microbench.bench.timing import host_time_us
    part = os.environ["PROBE_PART"]

    def launcher_graphs():
        for fn in LA.launchers(dev).values():
            host_time_us(fn, inner=100, budget_s=0.5)
            gg = LA.graph_of(fn, 100)
            gpu_time_us(gg.replay, inner=10, budget_s=0.5)
            del gg

    def node_graphs():
        fn = LA.launchers(dev)["torch"]
        for n in LA.NODE_COUNTS:
            gg = LA.graph_of(fn, n)
            host_time_us(gg.replay, inner=1, budget_s=0.5)
            gpu_time_us(gg.replay, inner=10, budget_s=0.5)
            del gg

    kept = []

    def one_graph(keep):
        gg = LA.graph_of(LA.launchers(dev)["torch"], 100)
        gg.replay()
        if keep:
            kept.append(gg)

    def replays(n_nodes, times):
        gg = LA.graph_of(LA.launchers(dev)["torch"], n_nodes)
        for _ in range(times):
            gg.replay()
        torch.cuda.synchronize()

    def eager_tiny(times):
        fn = LA.launchers(dev)["torch"]
        for _ in range(times):
            fn()
        torch.cuda.synchronize()

    def alloc_free():
        t = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
        t.fill_(1)
        del t
        torch.cuda.empty_cache()

    fns = dict(launcher_graphs=launcher_graphs, node_graphs=node_graphs,
               graph_kept=lambda: one_graph(True), graph_deleted=lambda: one_graph(False),
               empty_cache=torch.cuda.empty_cache,
               tiny_graph_replays=lambda: replays(1, 20000), node1000_replays=lambda: replays(1000, 200),
               tiny_eager=lambda: eager_tiny(20000), alloc_free_empty_cache=alloc_free,
               copy_curve=lambda: LA.copy_curve(dev, budget_s=0.5),
               measure_launch=lambda: LA.measure_launch(dev, budget_s=0.5))
    fns[part]()
    torch.cuda.synchronize()
    probe(f"after {part}")
    time.sleep(5)
    probe(f"after {part}, 5 s idle")
else:
    phases = [
        ("after copy_bandwidth", lambda: LA.copy_bandwidth(dev, budget_s=0.5)),
        ("after matmul_rate", lambda: LA.matmul_rate(dev, budget_s=0.5)),
        ("then 3 s idle", lambda: time.sleep(3)),
        ("then 10 s idle", lambda: time.sleep(10)),
        ("after making the launchers (cupy)", lambda: LA.launchers(dev)),
        ("after measure_launch (cupy, noop graphs)", lambda: LA.measure_launch(dev, budget_s=0.5)),
        ("then 10 s idle", lambda: time.sleep(10)),
        ("after measure_ops", lambda: LA.measure_ops(dec, 1, budget_s=0.3)),
        ("after kernel_lines", lambda: LA.kernel_lines(dec, CONTEXT, budget_s=0.1)),
        ("after eager steps", lambda: [dec.step(x[0], x[1], x[2]) for _ in range(200)]),
        ("after the profiler", lambda: LA.profile_kernels(lambda: runner.step_packed(x))),
    ]
    for label, fn in phases:
        fn()
        torch.cuda.synchronize()
        probe(label)
