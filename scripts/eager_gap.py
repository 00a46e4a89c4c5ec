"""Print, per row of committed sweep runs, how much longer the eager step took than the graph
step per kernel, beside how close the eager step's host time came to the graph step's GPU time
(over 1: the host sets the eager step; under 1: the GPU does) and the model's eager error. Where
the GPU sets the step, an eager step that still costs more than the graph step per kernel is the
GPU taking stream launches slower than graph nodes; runs that timed it (`launch`'s
`gpu_us_per_kernel_queued`) give that gap beside, for the tiny Triton kernel the model reads and
for a tiny cuBLAS one (the matmuls above 16 rows are cuBLAS's).

usage: python scripts/eager_gap.py RUN [RUN ...]   (sweep run folders holding run.json)
Every figure is read from the runs."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from microbench.analysis.model import stream_gap_us  # noqa: E402


def rows(folder):
    try:
        run = json.loads((Path(folder) / "run.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"cannot read {folder}/run.json ({e.__class__.__name__}); give sweep run folders")
    if run.get("kind") != "sweep" or not run.get("rows"):
        sys.exit(f"{folder}: not a sweep run with rows")
    launch = run.get("launch") or {}
    queued = launch.get("gpu_us_per_kernel_queued") or {}
    gap = stream_gap_us(launch) if "triton" in queued else None
    blas_gap = stream_gap_us(launch, "cublas") if "cublas" in queued else None
    for r in run["rows"]:
        need = ("eager_step_us", "graph_step_us", "eager_host_us", "graph_gpu_us", "eager_kernels")
        if any(r.get(k) is None for k in need):
            continue
        pred = r.get("predicted_eager_step_us")
        yield dict(run=Path(folder).name, git=(run["env"].get("git") or "?")[:7], bs=r["bs"],
                   host_over_gpu=r["eager_host_us"] / r["graph_gpu_us"],
                   gap=(r["eager_step_us"] - r["graph_step_us"]) / r["eager_kernels"],
                   err=None if pred is None else pred / r["eager_step_us"] - 1, stream_gap=gap,
                   blas_gap=blas_gap)


def table(folders):
    out = ["| run | git | bs | eager host / graph GPU | eager - graph per kernel (us) "
           "| model's eager error | stream gap timed (us) | cuBLAS stream gap timed (us) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in folders:
        for x in rows(f):
            err = "-" if x["err"] is None else f"{x['err']:+.1%}"
            gap, blas = ("-" if x[k] is None else f"{x[k]:.2f}" for k in ("stream_gap", "blas_gap"))
            out.append(f"| `{x['run']}` | `{x['git']}` | {x['bs']} | {x['host_over_gpu']:.2f} "
                       f"| {x['gap']:.2f} | {err} | {gap} | {blas} |")
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n".join(table(sys.argv[1:])))
