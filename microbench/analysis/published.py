"""Published tables predicted: the analytic model (`analysis.model`) on datasheet GPUs, with one
constant fitted on one published row, against the rest of the table.

The fitted constant is the host cost of one kernel launch, c, the same for every launcher: the
eager step's host cost is c times its kernel count, the part of a step that graphs remove. It
is chosen so that the model's eager/graph ratio at the fit row equals the published one
(bisection; the ratio grows with c). Every other row is then predicted with that c, the
datasheet bandwidth and matrix rate of its GPU, and the model shape of its preset.

Ratios are tokens per second with graphs over tokens per second without (what the write-ups
report; for decode-bound runs, eager step time over graph step time). Diagnostics per row, for
predicted eager E, graph G and published ratio r:
- `eager_short_us` = r·G - E: how much longer the eager step would have to be for the published
  ratio. Positive: the model's eager step is too cheap; per kernel (`eager_gap_us`) it is the
  GPU-side gap between eager launches that the model lacks (the device's own launch latency
  between stream kernels, paid even when the host runs ahead, and gone inside a graph), or a
  real engine's unfused eager plan with more kernels than the model's.
- `both_arms_us` = (E - r·G) / (r - 1) when negative short: the host time per step that, paid by
  both arms alike, would bring the ratio down to the published one: the engine's per-step
  scheduler, sampler and input preparation, which graphs do not remove.
- `implied_bw`: the bytes a step must move (`plan.step_bytes`: weights once, KV, activations)
  times the published graphed steps per second, over the datasheet bandwidth: above 1, the
  published rate is faster than the GPU can read what a step reads, so no launch cost fitted
  on it can be right in absolute terms (a figure to doubt, or a step that moves less than this
  model's: quantised or cached weights).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from microbench.analysis import model as mdl
from microbench.engine.plan import Fusion, step_bytes
from microbench.engine.shapes import PRESETS


@dataclass(frozen=True)
class PublishedRow:
    gpu: str
    bs: int
    eager_tok_s: float
    graph_tok_s: float
    context: int          # mean KV length a decode step attends to: prompt + half the output

    @property
    def ratio(self) -> float:
        return self.graph_tok_s / self.eager_tok_s


@dataclass(frozen=True)
class PublishedTable:
    name: str
    source: str
    preset: str
    rows: tuple[PublishedRow, ...]   # the first row is the one the constant is fitted on


# The published figures, as their write-ups give them (see docs/published.md for the words).
TABLES = {t.name: t for t in (
    PublishedTable(
        "opt125m-l4",
        "a CUDA-graphs lab write-up: vLLM 0.22.1, facebook/opt-125m on an L4 24GB, "
        "LLM.generate of n identical 6-token prompts, 128 new tokens each, enforce_eager on/off",
        "opt-125m",
        (PublishedRow("L4", 1, 980.3, 2473.6, 6 + 64),
         PublishedRow("L4", 8, 6912.4, 11034.8, 6 + 64),
         PublishedRow("L4", 64, 41560.2, 46883.1, 6 + 64))),
    PublishedTable(
        "llama8b-h200",
        "a course lab on CUDA graphs in vLLM: Llama-3.1-8B-Instruct bf16, benchmark_latency at "
        "batch 1, --enforce-eager against the default; tok/s (H200, L40S) and ms/tok (A100)",
        "llama-8b",
        (PublishedRow("H200", 1, 123.4, 171.6, 256 + 32),
         PublishedRow("L40S", 1, 44.58, 44.99, 512 + 64),
         PublishedRow("A100", 1, 1e3 / 12.61, 1e3 / 11.98, 256 + 32))),
)}


# The plan the predictions use: one kernel per operation, as a real engine's eager arm runs
# (enforce_eager turns torch.compile's fusion off), the same launches at every batch size.
PLAN = Fusion.UNFUSED


def profile(gpu: str, launch_us: float) -> mdl.DeviceProfile:
    """The datasheet GPU with every launcher's host cost c = launch_us (the model's defaults for
    the replay, sync and smallest-kernel constants)."""
    p = mdl.datasheet_profile(gpu)
    return replace(p, launch_host_us=dict(torch=launch_us, cublas=launch_us, triton=launch_us),
                   op_host_us={}, source=p.source + f"; launch {launch_us:.3f} us fitted")


def predict_row(table: PublishedTable, row: PublishedRow, launch_us: float) -> dict:
    return mdl.predict(PRESETS[table.preset], row.bs, row.context, profile(row.gpu, launch_us),
                       fusion=PLAN)


def fit_launch_us(table: PublishedTable, hi: float = 1000.0, tol: float = 1e-6) -> float:
    """The launch cost c at which the predicted ratio of the table's first row is the
    published one. ValueError when no c in [0, hi] reaches it."""
    row = table.rows[0]
    ratio = lambda c: predict_row(table, row, c)["predicted_speedup"]
    lo = 0.0
    if not ratio(lo) <= row.ratio <= ratio(hi):
        raise ValueError(f"{table.name}: the published ratio {row.ratio:.3f} is outside what the "
                         f"model gives for a launch cost of 0..{hi} us "
                         f"({ratio(lo):.3f}..{ratio(hi):.3f})")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) < row.ratio else (lo, mid)
    return (lo + hi) / 2


def compare_row(table: PublishedTable, row: PublishedRow, launch_us: float, role: str) -> dict:
    p = predict_row(table, row, launch_us)
    e, g, r = p["predicted_eager_step_us"], p["predicted_graph_step_us"], row.ratio
    shape, bw = PRESETS[table.preset], mdl.DATASHEET[row.gpu]["copy_bw"]
    moved = step_bytes(shape, row.bs, row.context, fusion=PLAN)
    return dict(gpu=row.gpu, bs=row.bs, context=row.context, role=role,
                published_ratio=r, predicted_ratio=p["predicted_speedup"],
                error=p["predicted_speedup"] / r - 1,
                published_graph_step_us=row.bs * 1e6 / row.graph_tok_s,
                predicted_graph_step_us=g, predicted_eager_step_us=e,
                kernels=p["kernels"], host_launch_us=p["host_launch_us"],
                gpu_busy_us=p["gpu_busy_us"],
                eager_short_us=r * g - e, eager_gap_us=(r * g - e) / p["kernels"],
                both_arms_us=(e - r * g) / (r - 1) if r > 1 and e > r * g else None,
                implied_bw=moved * row.graph_tok_s / row.bs / bw)


def predict_table(name: str) -> dict:
    """Fit the launch cost on the table's first row, predict the others: a dict with the fitted
    constant, the eager host cost per step it means at the fit row, and a row per published row."""
    if name not in TABLES:
        raise ValueError(f"unknown published table {name!r}; choose one of {', '.join(TABLES)}")
    t = TABLES[name]
    c = fit_launch_us(t)
    rows = [compare_row(t, r, c, "fit" if i == 0 else "predicted") for i, r in enumerate(t.rows)]
    return dict(name=t.name, source=t.source, preset=t.preset, fit_gpu=t.rows[0].gpu,
                fit_bs=t.rows[0].bs, launch_us=c, host_per_step_us=rows[0]["host_launch_us"],
                rows=rows)


def missing_term(row: dict, tol: float = 0.02) -> str:
    """In words, what the model lacks to meet a row: its ratio missed by more than tol, or a
    published graphed step faster than the datasheet bandwidth allows."""
    parts = []
    if row["implied_bw"] > 1:
        parts.append(f"published graph step moves {row['implied_bw']:.2f}x the datasheet bandwidth")
    if row["role"] != "fit" and abs(row["error"]) > tol:
        if row["eager_short_us"] > 0:
            parts.append(f"eager step {row['eager_short_us']:.0f} us too cheap "
                         f"({row['eager_gap_us']:.2f} us per kernel): an eager-only GPU gap per "
                         "launch, or more launches than the model's plan")
        else:
            x = row["both_arms_us"]
            parts.append(f"{x:.0f} us per step ({x / row['bs']:.0f} us per sequence) of host time "
                         "paid by both arms: the engine's scheduler, sampler and input preparation")
    return "; ".join(parts)


def format_table(res: dict) -> str:
    """The fit and the predictions, predicted beside published, as plain text."""
    out = [f"{res['name']}: {res['source']}",
           f"model: {res['preset']}, datasheet GPUs; fitted on {res['fit_gpu']} bs "
           f"{res['fit_bs']}: launch cost {res['launch_us']:.2f} us per kernel, "
           f"{res['host_per_step_us']:.0f} us of host launches per eager step",
           f"{'gpu':<5} {'bs':>3} {'role':<9} {'published':>9} {'predicted':>9} {'error':>7} "
           f"{'graph us pub':>12} {'pred':>7} {'kernels':>7} {'implied bw':>10}  missing term"]
    for r in res["rows"]:
        err = r["error"] if abs(r["error"]) >= 5e-5 else 0.0   # the fit row: bisection's residue
        out.append(f"{r['gpu']:<5} {r['bs']:>3} {r['role']:<9} {r['published_ratio']:>8.3f}x "
                   f"{r['predicted_ratio']:>8.3f}x {err:>+7.1%} "
                   f"{r['published_graph_step_us']:>12.0f} {r['predicted_graph_step_us']:>7.0f} "
                   f"{r['kernels']:>7} {r['implied_bw']:>9.2f}x  {missing_term(r)}")
    return "\n".join(out)
