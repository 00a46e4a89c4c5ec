"""What `microbench model` does, as functions the tests call: pick a device profile, predict.
The rows come back as plain dicts; `report.model_table` renders them."""
from __future__ import annotations

from dataclasses import replace

from microbench.analysis import model as mdl
from microbench.engine.shapes import ModelShape
from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.ladders import resolve_ladder
from microbench.engine.plan import FAST_ROWS, Fusion, plan_at


def resolve_profile(run: dict | None, gpu, copy_bw_gbs, tflops, launch_us,
                    preset: str | None = None, run_name: str = "the run",
                    context: int | None = None) -> mdl.DeviceProfile:
    """A measured profile from a saved run (loaded; `run_name` says where from), a datasheet
    GPU, explicit numbers, or a mix: later sources override earlier ones (run, then --gpu, then
    explicit options). A run's kernel lines are fitted on its own preset's kernels (a 125M
    model's matmuls stream slower than a 70B's): for another `preset` they are dropped and every
    kernel uses the copy line. Its ops' own points were timed at its context (attention's bytes
    are its history's): at another `context` they are dropped and the lines price every op."""
    prof = None
    if run is not None:
        if "launch" not in run:
            raise ValueError(f"--profile: {run_name} holds no launch measurements (a sweep "
                             "or launch run that finished has them)")
        prof = mdl.DeviceProfile.from_launch(run["launch"], name=run["env"].get("gpu") or "?",
                                             source=f"measured: {run_name}")
        measured = run.get("config", {}).get("preset")
        if preset and prof.kernel_lines and measured != preset:
            prof = replace(prof, kernel_lines={}, kernel_points={}, source=prof.source + (
                f"; its kernel lines were fitted on {measured}'s kernels: copy line instead"))
        at = run.get("config", {}).get("context")
        if context is not None and prof.kernel_points and at is not None and at != context:
            prof = replace(prof, kernel_points={}, source=prof.source + (
                f"; its ops were timed at context {at}: the kernel lines instead"))
    if gpu:
        prof = mdl.datasheet_profile(gpu, prof)
    if prof is None:
        if not (copy_bw_gbs and tflops):
            raise ValueError("--profile, --gpu, or both --copy-bw and --tflops are needed "
                             "(a device profile: measured, datasheet, or given)")
        prof = mdl.DeviceProfile(name="given", source="options", copy_bw=1.0, matmul_flops=1.0)
    changes = {}
    if copy_bw_gbs:
        changes["copy_bw"] = copy_bw_gbs * 1e9
    if tflops:
        changes["matmul_flops"] = tflops * 1e12
    if launch_us is not None:
        changes["launch_host_us"] = {k: launch_us for k in ("torch", "cublas", "triton")}
        changes["op_host_us"] = {}  # a given launch cost replaces the measured per-op costs
    if changes:
        prof = replace(prof, source=prof.source + " + options " + ", ".join(changes), **changes)
    return prof


def run_fusion(run: dict | None) -> Fusion:
    """The plan a saved run's decoder ran: its `decoder` record (Fusion.from_record), or for
    runs made before that record existed, whether its per-op host costs were measured through
    the fused wrappers (`rope_store_kv`); no run, or a run with no per-op costs, gets today's
    default."""
    if run is None:
        return Fusion.ATTENTION
    if "decoder" in run:
        return Fusion.from_record(run["decoder"])
    ops = (run.get("launch") or {}).get("ops_host_us")
    if not ops:
        return Fusion.ATTENTION
    return Fusion.MATMULS if "rope_store_kv" in ops else Fusion.UNFUSED


def run_separate_rows(run: dict | None) -> list:
    """The batch sizes at which a saved run's decoder ran its attention as separate kernels (its
    `decoder` record's `separate_attention_rows`); none in runs that did not record it."""
    return list(((run or {}).get("decoder") or {}).get("separate_attention_rows") or [])


def run_fast_rows(run: dict | None) -> int:
    """The rows up to which a saved run's decoder ran its skinny matmuls (its `decoder` record's
    `fast_rows`); runs that did not record it, and no run, get today's plan.FAST_ROWS."""
    return int(((run or {}).get("decoder") or {}).get("fast_rows") or FAST_ROWS)


def model_rows(shape: ModelShape, bs, context: int, ladder: str, prof: mdl.DeviceProfile,
               below: float = 1.1, dtype: str = "bfloat16",
               fusion: Fusion = Fusion.ATTENTION, fast_rows: int = FAST_ROWS,
               separate_rows=()) -> dict:
    """The model's rows at batch sizes `bs`, each in the plan plan.plan_at gives its size
    (separate_rows: the sizes whose attention ran as separate kernels, run_separate_rows)."""
    elt = 4 if dtype == "float32" else 2
    disp = PaddingDispatcher(resolve_ladder(ladder, max(bs)))
    at = lambda b: plan_at(fusion, b, separate_rows)
    rows = [mdl.predict(shape, b, context, prof, padded=disp.pad(b) or b, elt=elt, fusion=at(b),
                        fast_rows=fast_rows, padded_fusion=at(disp.pad(b) or b)) for b in bs]
    for r, b in zip(rows, bs):
        if disp.pad(b) is None:  # no graph: it runs eagerly
            r.update(predicted_graph_step_us=r["predicted_eager_step_us"], predicted_speedup=1.0,
                     padded_bs=None, graph_gpu_us=None, graph_gpu_us_by_family=None)
    return dict(preset=shape.name, context=context, ladder=ladder, profile=prof.to_dict(),
                rows=rows, crossover_bs=mdl.crossover(shape, context, prof, below, elt=elt,
                                                         fusion=fusion, fast_rows=fast_rows,
                                                         separate_rows=separate_rows),
                below=below, fusion=int(fusion), fast_rows=fast_rows)


def attach_measured(res: dict, run: dict) -> dict:
    """Put a saved sweep's measurements beside the predictions, for the batch sizes both have
    and whose graphs are of one size (the model's ladder pads a batch as the run's did), when
    the sweep ran the same preset at the same context (validating the model on a run)."""
    cfg = run.get("config", {})
    if run.get("kind") != "sweep" or cfg.get("preset") != res["preset"] or \
            cfg.get("context") != res["context"]:
        return res
    measured = {r["bs"]: r for r in run.get("rows", []) if r.get("speedup")}
    # the run's GPU figures per row were measured beside its profile: under --repeat by the
    # first process (repeats.first_rows, as report.tables.own_rows reads them)
    first = {r["bs"]: r for r in (run.get("repeats") or {}).get("first_rows") or run.get("rows", [])}
    families = run.get("graph_family_bw") or {}
    for r in res["rows"]:
        own = first.get(r["bs"])
        if own and own.get("graph_gpu_us") and r.get("padded_bs") \
                and own.get("padded_bs") == r["padded_bs"]:
            # the same graph as predicted: events around its replays, and its kernels each
            # timed alone in a replay per plan family (where the predicted GPU time parts from
            # the measured one)
            r["measured_graph_gpu_us"] = own["graph_gpu_us"]
            fam = families.get(str(r["bs"]))
            if fam:
                r["measured_graph_gpu_us_by_family"] = {f: d["us"] for f, d in fam.items()}
        m = measured.get(r["bs"])
        if m and m.get("padded_bs", r["padded_bs"]) == r["padded_bs"]:
            r.update(measured_eager_step_us=m["eager_step_us"],
                     measured_graph_step_us=m["graph_step_us"], measured_speedup=m["speedup"],
                     speedup_error=r["predicted_speedup"] / m["speedup"] - 1)
            if m.get("op_host_us") is not None and m.get("predicted_speedup"):
                # the sweep's own prediction for that row, with the host costs measured beside
                # its eager steps (the host drifts within a run; the run-level profile is one
                # sample, taken after the rows)
                r.update(row_predicted_speedup=m["predicted_speedup"],
                         row_speedup_error=m["predicted_speedup"] / m["speedup"] - 1)
    return res
