"""What `microbench model` does, as functions the tests call: pick a device profile, predict."""
from __future__ import annotations

from dataclasses import replace

from microbench.analysis import model as mdl
from microbench.engine.shapes import ModelShape
from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.ladders import resolve_ladder
from microbench.report.tables import table


def resolve_profile(run_path, gpu, copy_bw_gbs, tflops, launch_us,
                    preset: str | None = None) -> mdl.DeviceProfile:
    """A measured profile from a saved run, a datasheet GPU, explicit numbers, or a mix: later
    sources override earlier ones (run, then --gpu, then explicit options). A run's kernel lines
    are fitted on its own preset's kernels (a 125M model's matmuls stream slower than a 70B's):
    for another `preset` they are dropped and every kernel uses the copy line."""
    prof = None
    if run_path:
        from microbench.report.record import load_run
        try:
            run = load_run(run_path)
        except ValueError as e:
            raise ValueError(f"--profile: {e}") from None
        if "launch" not in run:
            raise ValueError(f"--profile: {run_path} holds no launch measurements")
        prof = mdl.DeviceProfile.from_launch(run["launch"], name=run["env"].get("gpu") or "?",
                                             source=f"measured: {run_path}")
        measured = run.get("config", {}).get("preset")
        if preset and prof.kernel_lines and measured != preset:
            prof = replace(prof, kernel_lines={}, source=prof.source + (
                f"; its kernel lines were fitted on {measured}'s kernels: copy line instead"))
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


def run_fused(run: dict) -> int:
    """The plan (workload.UNFUSED, FUSED_MATMULS or FUSED_ATTENTION) a saved run's decoder ran:
    its `decoder` record (runs before `fuse_attention` was recorded ran rope_store_kv), or for
    runs made before that record existed, whether its per-op host costs were measured through
    the fused wrappers (`rope_store_kv`); a run with no per-op costs gets today's default."""
    from microbench.engine.plan import FUSED_ATTENTION, FUSED_MATMULS, UNFUSED
    if "decoder" in run:
        d = run["decoder"]
        if not d.get("fuse"):
            return UNFUSED
        return FUSED_ATTENTION if d.get("fuse_attention") else FUSED_MATMULS
    ops = (run.get("launch") or {}).get("ops_host_us")
    if not ops:
        return FUSED_ATTENTION
    return FUSED_MATMULS if "rope_store_kv" in ops else UNFUSED


def model_rows(shape: ModelShape, bs, context: int, ladder: str, prof: mdl.DeviceProfile,
               below: float = 1.1, dtype: str = "bfloat16", fuse: int = 2) -> dict:
    elt = 4 if dtype == "float32" else 2
    disp = PaddingDispatcher(resolve_ladder(ladder, max(bs)))
    rows = [mdl.predict(shape, b, context, prof, padded=disp.pad(b) or b, elt=elt, fuse=fuse)
            for b in bs]
    for r, b in zip(rows, bs):
        if disp.pad(b) is None:  # no graph: it runs eagerly
            r.update(predicted_graph_step_us=r["predicted_eager_step_us"], predicted_speedup=1.0,
                     padded_bs=None)
    return dict(preset=shape.name, context=context, ladder=ladder, profile=prof.to_dict(),
                rows=rows, crossover_bs=mdl.crossover(shape, context, prof, below, elt=elt, fuse=fuse),
                below=below, fused=fuse)


def attach_measured(res: dict, run: dict) -> dict:
    """Put a saved sweep's measurements beside the predictions, for the batch sizes both have,
    when the sweep ran the same preset at the same context (validating the model on a run)."""
    cfg = run.get("config", {})
    if run.get("kind") != "sweep" or cfg.get("preset") != res["preset"] or \
            cfg.get("context") != res["context"]:
        return res
    measured = {r["bs"]: r for r in run.get("rows", []) if r.get("speedup")}
    for r in res["rows"]:
        m = measured.get(r["bs"])
        if m:
            r.update(measured_eager_step_us=m["eager_step_us"],
                     measured_graph_step_us=m["graph_step_us"], measured_speedup=m["speedup"],
                     speedup_error=r["predicted_speedup"] / m["speedup"] - 1)
            if m.get("op_host_us") is not None and m.get("predicted_speedup"):
                # the sweep's own prediction for that row, with the host costs measured beside
                # its eager steps (the host drifts within a run; this profile is its start)
                r.update(row_predicted_speedup=m["predicted_speedup"],
                         row_speedup_error=m["predicted_speedup"] / m["speedup"] - 1)
    return res


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
                   "steps; the columns before use this run's start-of-run profile, and the host's "
                   "speed drifts within a run")
    c = res["crossover_bs"]
    out.append(f"speedup falls under {res['below']:.2f}x at bs {c}" if c else
               f"speedup stays above {res['below']:.2f}x up to bs 4096")
    return "\n".join(out)
