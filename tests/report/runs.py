"""Small valid runs of each kind, as their producers write them, for the report and CLI tests.
Numbers here are synthetic fixtures, not measurements."""
from __future__ import annotations

import copy


def sweep_row(bs: int = 1, eager: float = 900.0, graph: float | None = 300.0) -> dict:
    return dict(bs=bs, padded_bs=bs, ran_as="full", eager_step_us=eager, eager_p20=eager * 0.98,
                eager_p80=eager * 1.02, eager_n=20, graph_step_us=graph,
                speedup=eager / graph if graph else None, eager_tok_s=bs / eager * 1e6,
                graph_tok_s=bs / graph * 1e6 if graph else None,
                graph_tok_s_per_seq=1 / graph * 1e6 if graph else None)


ENV = dict(gpu="Test GPU", torch="x", triton="y", date="2026-01-01T00:00:00+00:00",
           command="microbench sweep", git="abc")

LAUNCH = dict(host_us=dict(torch=dict(median=9.0, p20=8.5, p80=9.5)),
              gpu_us_per_kernel=dict(torch=dict(median=1.0)),
              replay={"1": dict(host_us=dict(median=4.0), gpu_us=dict(median=3.0))},
              replay_fit=dict(host_fixed_us=4.0, host_per_node_us=0.01, gpu_fixed_us=2.0,
                              gpu_per_node_us=0.5),
              sync_us=dict(median=10.0), copy=dict(bytes_per_s=3e12),
              matmul=dict(flops_per_s=7e14))


def sweep_run(**over) -> dict:
    run = dict(kind="sweep", config=dict(preset="tiny", dtype="bfloat16", mode="full",
                                         ladder="vllm", context=64, bs=[1, 4]),
               env=dict(ENV), ladder=[1, 2, 4, 8], rows=[sweep_row(1), sweep_row(4, 950.0, 320.0)],
               interrupted=False, wall_s=1.5)
    run.update(over)
    return copy.deepcopy(run)


def launch_run() -> dict:
    return copy.deepcopy(dict(kind="launch", config=dict(time_budget=0.1, out="runs"),
                              env=dict(ENV), launch=LAUNCH))


def kernels_run() -> dict:
    return dict(kind="kernels", config=dict(preset="tiny", context=64, batches=[1]), env=dict(ENV),
                copy=dict(bytes_per_s=3e12),
                rows=[dict(kernel="rmsnorm", B=1, context=None, bytes=4096, time_us=2.0,
                           bytes_per_s=2.048e9, frac_of_copy=0.0007)])


def reproduce_run() -> dict:
    return dict(kind="reproduce", config=dict(preset="tiny", context=64, dtype="bfloat16", bs=[1]),
                env=dict(ENV), phenomena=[dict(name="speedup-fade", expected="fades",
                                               measured="it faded", held=True, why="", rows=[])])
