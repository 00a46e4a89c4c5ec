"""The table `microbench model` prints: predicted (and, beside a saved sweep, measured) eager
and graph step times and speedups. Takes the plain dict `analysis.model_rows.model_rows` returns
(with `attach_measured`'s columns when present) and formats it; computes nothing."""
from __future__ import annotations

from microbench.report.tables import table


def model_table(res: dict) -> str:
    p = res["profile"]
    head = (f"PREDICTION for {res['preset']} at context {res['context']} on {p['name']} "
            f"({p['source']}): copy {p['copy_bw'] / 1e12:.2f} TB/s, matmul "
            f"{p['matmul_flops'] / 1e12:.0f} TFLOP/s, launch "
            + ", ".join(f"{k} {v:.1f} us" for k, v in p["launch_host_us"].items()))
    rows = [[str(r["bs"]), str(r["padded_bs"] or "eager"), str(r["kernels"]),
             f"{r['host_launch_us']:.0f}", f"{r['gpu_busy_us']:.0f}",
             f"{r['predicted_eager_step_us']:.0f}", f"{r['predicted_graph_step_us']:.0f}",
             f"{r['predicted_speedup']:.2f}"] for r in res["rows"]]
    heads = ["bs", "pad", "kernels", "host us", "GPU us", "eager us", "graph us", "speedup"]
    if any("measured_speedup" in r for r in res["rows"]):
        heads += ["measured", "error"]
        for cells, r in zip(rows, res["rows"]):
            cells += ([f"{r['measured_speedup']:.2f}", f"{r['speedup_error']:+.0%}"]
                      if "measured_speedup" in r else ["-", "-"])
    in_row = any("row_predicted_speedup" in r for r in res["rows"])
    if in_row:
        heads += ["in-row pred", "error"]
        for cells, r in zip(rows, res["rows"]):
            cells += ([f"{r['row_predicted_speedup']:.2f}", f"{r['row_speedup_error']:+.0%}"]
                      if "row_predicted_speedup" in r else ["-", "-"])
    out = [head, table(heads, rows)]
    if in_row:
        out.append("in-row pred: the sweep's prediction for that row, with the host costs (each "
                   "op's, the Python between launches, the runner's enqueue) measured beside its "
                   "steps; the columns before use the run's profile, measured once after its "
                   "rows, and the host's speed drifts within a run")
    gpu_rows = [r for r in res["rows"] if r.get("measured_graph_gpu_us")]
    if gpu_rows:
        out.append("a graph's GPU us, predicted / measured (events around the row's replays), "
                   "then by plan family against the run's kernels each timed alone in a replay "
                   "(which sum past the step where PDL overlaps them):")
        for r in gpu_rows:
            pred, meas = r["graph_gpu_us_by_family"], r.get("measured_graph_gpu_us_by_family", {})
            total, ev = r["graph_gpu_us"], r["measured_graph_gpu_us"]
            fams = sorted(set(pred) | set(meas), key=lambda f: -max(pred.get(f, 0), meas.get(f, 0)))
            out.append(f"  bs {r['bs']}: GPU {total:.0f} / {ev:.0f} ({total / ev - 1:+.0%})" + "".join(
                f", {f} " + " / ".join(f"{d[f]:.0f}" if f in d else "-" for d in (pred, meas))
                for f in fams))
    c = res["crossover_bs"]
    out.append(f"speedup falls under {res['below']:.2f}x at bs {c}" if c else
               f"speedup stays above {res['below']:.2f}x up to bs 4096")
    return "\n".join(out)
