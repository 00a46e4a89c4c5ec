"""Probe: why a sweep's bs-1 llama-1b graph step reads more GPU time (1018-1019 us in the runs of
4747730, 0ba83cf and 38d6d73) than the same step in the probes (990-1000 us with the input copy).
In one process: a probe runner's step (GPU back to back, and synchronised), then a whole
`run_sweep` at bs 1 (its row's figures), then the probe runner's step again."""
import tempfile

import torch

from microbench.graphs import GraphRunner
from microbench.launch import copy_bandwidth
from microbench.sweep import SweepConfig, run_sweep
from microbench.timing import gpu_time_us, step_time_us
from probe_common import bs1_decoder

dev = torch.device("cuda")
copy = copy_bandwidth(dev, budget_s=0.3)["bytes_per_s"]
print(f"copy bandwidth {copy / 1e12:.3f} TB/s", flush=True)
dec, x, nb = bs1_decoder("llama-1b", dev)
runner = GraphRunner(dec, [1], mode="full", progress=False)
runner.capture()
g = runner.entries[1].graphs[0]


def probe(label):
    rep = gpu_time_us(g.replay, inner=10, budget_s=1.0).median
    gpu = gpu_time_us(lambda: runner.step_packed(x), inner=10, budget_s=1.0).median
    _, wall = step_time_us(lambda: runner.step_packed(x), inner=10, sync_each=True, budget_s=1.0)
    print(f"{label:34s}: replay GPU {rep:7.1f} us, step_packed GPU {gpu:7.1f} us, synced step "
          f"{wall.median:7.1f} us ({nb / (wall.median * 1e-6) / copy:.1%})", flush=True)


probe("probe runner, before the sweep")
for arms in ((), ("torch-eager", "torch-graph", "compile")):
    with tempfile.TemporaryDirectory() as tmp:
        run = run_sweep(SweepConfig(bs=(1,), preset="llama-1b", out=tmp, arms=arms))
    row = run["rows"][0]
    print(f"sweep at bs 1, arms {','.join(arms) or '-':28s}: graph GPU {row['graph_gpu_us']:7.1f} us, "
          f"synced step {row['graph_step_us']:7.1f} us, graph_mbu {row['graph_mbu']:.4f}, "
          f"host {row['graph_host_us']:.1f} us; max batch {max(run['ladder'])}", flush=True)
    probe("probe runner, after that sweep")
