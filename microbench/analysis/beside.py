"""The model beside measured rows: what the sweep and the TP sweep record next to each measured
batch size (graph_mbu, predicted step times and speedup, the error of the prediction). The
benchmarks measure and call these through a `predict` argument the CLI passes, so the measuring
layer never imports the model.
"""
from __future__ import annotations

from dataclasses import fields, replace

from microbench.analysis import model as mdl
from microbench.analysis.model_tp import AllReduceProfile, bus_bandwidth, fit_allreduce, predict_tp
from microbench.engine.shapes import PRESETS


def predict_sweep(run: dict, dec, measured: list, context: int, elt: int, kernels) -> None:
    """Fill run["profile"] (the device measured in run["launch"]), run["eager_breakdown"] (the
    first row's eager bill by launcher) and each measured row's graph_mbu and model columns;
    `measured` is [(row, padded)], `kernels` the plan of the first row, `dec` the decoder."""
    profile = mdl.DeviceProfile.from_launch(run["launch"], name=run["env"]["gpu"],
                                            source="measured: this run")
    run["profile"] = profile.to_dict()
    for i, (row, padded) in enumerate(measured):
        bs = row["bs"]
        best = row["graph_step_us"] or row["eager_step_us"]
        row["graph_mbu"] = row["step_bytes"] / (best * 1e-6) / profile.copy_bw
        # the host costs sampled beside the row's own steps (the host's speed drifts)
        row_profile = replace(sampled(profile, row), graph_host_us=row.get("graph_host_us"))
        if i == 0:
            # the first row's eager bill by launcher, from the host costs sampled beside its
            # own steps (the launch figures are the host's state at the end of the run)
            run["eager_breakdown"] = eager_breakdown(kernels, row_profile)
        pred = mdl.predict(dec.shape, bs, context, row_profile, padded=padded or bs, elt=elt,
                           attn_launches=dec.attention_launches(bs),
                           padded_attn_launches=dec.attention_launches(padded or bs),
                           fusion=dec.fusion_at(bs), padded_fusion=dec.fusion_at(padded or bs))
        row.update(predicted_eager_step_us=pred["predicted_eager_step_us"],
                   predicted_graph_step_us=pred["predicted_graph_step_us"],
                   predicted_speedup=pred["predicted_speedup"])
        if row.get("speedup"):
            row["speedup_error"] = row["predicted_speedup"] / row["speedup"] - 1


def eager_breakdown(kernels, profile) -> dict:
    """Where one eager step's host time goes: kernels and host us per launcher, from the
    per-op host costs measured through the decoder's wrappers."""
    out: dict = {}
    for k in kernels:
        d = out.setdefault(k.launcher, dict(kernels=0, host_us=0.0))
        d["kernels"] += 1
        d["host_us"] += profile.kernel_host_us(k)
    return out


def predict_fade(rows: list[dict], dec, launch: dict, gpu: str, context: int, elt: int,
                 profile: mdl.DeviceProfile | None = None) -> dict:
    """speedup-fade's model columns (predicted_speedup, predicted eager and graph step times)
    from the device measured in `launch` (or `profile`); returns the profile as a dict."""
    prof = profile or mdl.DeviceProfile.from_launch(launch, name=gpu, source="measured: this run")
    for r in rows:
        pad = r["padded_bs"] or r["bs"]
        p = mdl.predict(dec.shape, r["bs"], context, prof, padded=pad, elt=elt,
                        attn_launches=dec.attention_launches(r["bs"]),
                        padded_attn_launches=dec.attention_launches(pad),
                        fusion=dec.fusion_at(r["bs"]), padded_fusion=dec.fusion_at(pad))
        r.update(predicted_speedup=p["predicted_speedup"],
                 predicted_eager_step_us=p["predicted_eager_step_us"],
                 predicted_graph_step_us=p["predicted_graph_step_us"])
    return prof.to_dict()


def allreduce_fit(points: list[dict], world: int, host_us: float | None) -> dict | None:
    """Each all-reduce point's bus bandwidth (graph and eager, NCCL's convention), and the fit
    t = alpha + busbytes(S) / BW_bus over the graph times (None with fewer than two sizes)."""
    for p in points:
        p.update(busbw=bus_bandwidth(p["bytes"], p["graph_us"], world),
                 busbw_eager=bus_bandwidth(p["bytes"], p["eager_us"], world))
    if len(points) < 2:
        return None
    fit = fit_allreduce([(p["bytes"], p["graph_us"]) for p in points], world, host_us=host_us,
                        source="measured: graph replays, this run")
    return fit.to_dict()


def sampled(profile: mdl.DeviceProfile, row: dict) -> mdl.DeviceProfile:
    """`profile` with the host costs sampled beside the row's own eager steps, where the row
    has them (the host's speed drifts within a run)."""
    if row.get("op_host_us") is None:
        return profile
    return replace(profile, op_host_us={**profile.op_host_us, **row["op_host_us"]},
                   piece_glue_us=row["piece_glue_us"])


class TPRowModel:
    """The model beside the TP sweep's rows on rank 0: the device measured on rank 0
    (run["launch"]) and the all-reduce fit (run["allreduce"]), for the shard `shard`."""

    def __init__(self, run: dict, shard, cfg, world: int, elt: int):
        self.shard, self.cfg, self.world, self.elt = shard, cfg, world, elt
        self.profile = mdl.DeviceProfile.from_launch(run["launch"], name=run["env"]["gpu"],
                                                     source="measured: rank 0, this run")
        run["profile"] = self.profile.to_dict()
        fit = run["allreduce"]["fit"]
        self.ar = AllReduceProfile.from_dict(fit) if fit else None

    def predict(self, row: dict, tp1: dict) -> None:
        """The row's predicted step times, speedup and all-reduce share at TP, TP 1's
        predictions where TP 1 was measured, and the errors against the measurements; none
        where the all-reduce benchmark gave no fit (fewer than two sizes): the model would
        price the all-reduces at nothing."""
        if self.ar is None and self.world > 1:
            return
        shape, context, bs = self.cfg.shape, self.cfg.context, row["bs"]
        pad = row["padded_bs"] or bs
        plan = {"fusion": self.shard.fusion} if hasattr(self.shard, "fusion") else {}
        pred = predict_tp(shape, self.world, bs, context, sampled(self.profile, row), self.ar,
                          padded=pad, elt=self.elt,
                          attn_launches=self.shard.attention_launches(bs),
                          padded_attn_launches=self.shard.attention_launches(pad), **plan)
        row.update({k: pred[k] for k in ("predicted_eager_step_us", "predicted_graph_step_us",
                                         "predicted_speedup", "predicted_allreduce_share_graph")})
        one = next((r for r in tp1.get("rows", []) if r["bs"] == bs), None)
        if one:
            p1 = mdl.predict(shape, bs, context, sampled(self.profile, one), padded=pad,
                             elt=self.elt,
                             attn_launches=one["attn_launches"],
                             padded_attn_launches=one["padded_attn_launches"],
                             **tp1.get("plan", {}))
            row.update(predicted_tp1_eager_step_us=p1["predicted_eager_step_us"],
                       predicted_tp1_graph_step_us=p1["predicted_graph_step_us"])
        if row.get("speedup"):
            row["speedup_error"] = row["predicted_speedup"] / row["speedup"] - 1
            row["graph_error"] = row["predicted_graph_step_us"] / row["graph_step_us"] - 1


# The published speedup-fade setting: OPT-125m on an L4, decode of 128 tokens after a 6-token
# prompt, so a step attends to about 70 positions on average.
PUBLISHED_FADE = dict(preset="opt-125m", gpu="L4", context=70, bs=(1, 8, 64))


def predict_published_fade(profile: dict | None) -> dict | None:
    """The model at the published speedup-fade setting: the L4's datasheet bandwidth and matrix
    rate with the host constants of `profile` (a measured profile as saved, this run's launch
    and op costs), OPT-125m, bs 1, 8 and 64; {bs: predicted speedup}, or None without one."""
    if not profile:
        return None
    known = {f.name for f in fields(mdl.DeviceProfile)}
    host = mdl.DeviceProfile(**{k: v for k, v in profile.items() if k in known})
    p = mdl.datasheet_profile(PUBLISHED_FADE["gpu"], host)
    shape = PRESETS[PUBLISHED_FADE["preset"]]
    return {b: mdl.predict(shape, b, PUBLISHED_FADE["context"], p)["predicted_speedup"]
            for b in PUBLISHED_FADE["bs"]}
