"""Verdicts of `microbench reproduce`: pure functions of saved measurements (CPU-testable).

Each verdict tests the published claim it names: its output states the published figure
(PUBLISHED), the pass condition (a stated tolerance on that claim), the analytic model's figure
for the published setting where it can make one, and the measurement here; a note says where the
toy decoder's physics differs from the published engine's. Speedups are judged on their
intervals (stats.speedup_interval); step times noise-aware (analysis.judging.slower). A rule
changed after a measurement says why in its commit, and realistic cases that fail it are tested.
"""
from __future__ import annotations

from microbench.analysis.beside import PUBLISHED_FADE, predict_published_fade
from microbench.analysis.budget import budget_checks, budget_text
from microbench.analysis.judging import (GiB, MiB, fmt_mib, fmt_x, ratio_band, row_where,
                                         slower, verdict, vs_exact_band, within)
from microbench.engine.plan import FAST_ROWS
from microbench.stats import above, check_shape, fit_pool, speedup_interval

NEAR = 0.8            # "back near bs 1": per-sequence throughput at least 80% of bs 1's

# The published figures each verdict names (seeds in shared/seeds, named here in words).
PUBLISHED = dict(
    # a lab write-up, OPT-125m on an NVIDIA L4 under vLLM: graphs against enforce_eager
    fade={1: 2.5, 8: 1.6, 64: 1.13},
    # a release note, Gemma E4B on an RTX PRO 6000: B=4 132.7 -> 157.3 tok/s; per-seq 39.3 at
    # B=4 against 40.0 at B=1; the fallback there was piecewise graphs, not eager
    ladder_gain=157.3 / 132.7 - 1, ladder_per_seq=39.3 / 40.0,
    # vLLM pull request #40734: 5400 tok/s off-stride against 16639 on-stride
    off_stride=16639 / 5400,
    # the OPT-125m lab write-up: "Graph capturing finished in 7 secs, took 0.41 GiB", 46 graphs
    capture_s=7.0, graphs=46, pool_bytes=0.41 * GiB,
    # the same run: gpu_memory_utilization 0.5 of a 24 GB L4
    budget_bytes=0.5 * 24e9,
)
# Tolerances on the claims, fixed with the rules (see each verdict's pass_if).
FADE_MIN = 1.25        # bs-1 speedup's interval at least this (published 2.5x; flat 1.0x fails)
FACTOR = 2.0           # a magnitude "as published": within this factor of the figure
WIDE = 10.0            # a magnitude "of the published order": within this factor
HEADROOM_MAX = 0.10    # the full ladder's pool at most this share of the KV budget


# ---- verdicts: pure functions of a saved entry ---------------------------------------------
def judge_speedup_fade(e: dict) -> dict:
    """The published figures are graphs against enforce_eager, which turns off an engine's
    fusions and its graphs together: where the run measured the engine-eager arm (the unfused
    plan's bound steps) that bundle is judged, and the graphs alone (eager against graph, the
    same plan on both sides) are reported beside it; older runs judge the graphs alone."""
    rows = sorted(e["rows"], key=lambda r: r["bs"])
    bundle = all(r.get("engine_eager_speedup") for r in rows)
    px = "engine_eager_" if bundle else ""
    sc, alone = check_shape(rows, prefix=px), check_shape(rows)
    first, last = rows[0], rows[-1]
    i0, iz = speedup_interval(first, px), speedup_interval(last, px)
    pub = PUBLISHED["fade"]
    checks = {f"the published shape does not hold ({sc['why']}, on {sc['basis']}s)": bool(sc["held"]),
              f"at bs {first['bs']} the speedup's interval reaches below {FADE_MIN}x":
              i0 is not None and i0[0] >= FADE_MIN,
              f"the speedup does not fade: bs {first['bs']}'s interval is not wholly above "
              f"bs {last['bs']}'s": len(rows) > 1 and i0 is not None and above(i0, iz)}
    depth, pub_depth = None, pub[1] / pub[64]
    if (first["bs"], last["bs"]) == (1, 64):   # the published fade's depth, bs 1 over bs 64
        depth = first[px + "speedup"] / last[px + "speedup"]
        checks[f"the fade's depth (bs 1 over bs 64, {depth:.2f}) is not within a factor "
               f"{FACTOR:g} of the published {pub_depth:.2f}"] = within(depth, pub_depth, FACTOR)
    pred = predict_published_fade((e.get("info") or {}).get("profile"))
    what = "engine-eager against graph (the bundle)" if bundle else "eager against graph"
    measured = (f"{what}: speedup {fmt_x([(r['bs'], r[px + 'speedup']) for r in rows])}"
                + "".join(f" [{lo:.2f}, {hi:.2f}] at bs {r['bs']}" for r in rows[:1]
                          for lo, hi in [speedup_interval(r, px)]))
    if bundle:
        measured += (f"; the graphs alone (eager against graph): "
                     f"{fmt_x([(r['bs'], r['speedup']) for r in rows])}")
    notes = [f"Eager {first['eager_step_us']:.0f} us, graph {first['graph_step_us']:.0f} us at bs "
             f"{first['bs']}: the graph removes {1 - first['graph_step_us'] / first['eager_step_us']:.0%} "
             f"of the eager step, the time the GPU waits on the host's launches."]
    if bundle:
        notes.append(f"Judged: the bundle an operator toggles with enforce_eager (the published "
                     f"comparison). The graphs alone, the same fused plan on both sides: shape "
                     f"{'held' if alone['held'] else 'NOT held (' + alone['why'] + ')'}.")
        if not alone["held"] and last["bs"] > FAST_ROWS:
            notes.append(f"Toy physics: above {FAST_ROWS} rows the plan runs cuBLAS matmuls "
                         f"with separate norm and SwiGLU kernels, more launches for the fused "
                         f"eager step, so the graphs' own speedup can rise there; an engine's "
                         f"kernels do not change plan with the batch.")
    notes += fade_notes(rows, pred)
    return verdict(
        checks, measured, notes, shape_check=sc, shape_check_graphs_alone=alone, depth=depth,
        judged="engine-eager" if bundle else "eager", predicted_published=pred,
        published=f"about {pub[1]}x at bs 1, {pub[8]}x at 8, {pub[64]}x at 64 (OPT-125m, L4, "
                  f"graphs against enforce_eager); largest at bs 1, fading, never below 1",
        pass_if=f"{what}: shape held on each row's interval (no separated rise, no interval "
                f"wholly below 1); bs {first['bs']}'s interval at least {FADE_MIN}x; "
                f"bs {first['bs']}'s interval wholly above bs {last['bs']}'s; with bs 1 and 64 "
                f"swept, bs 1's speedup over bs 64's within a factor {FACTOR:g} of the "
                f"published {pub_depth:.2f}",
        predicted=fmt_x(sorted(pred.items())) + " (L4 datasheet, this run's host costs)" if pred else None)


def fade_notes(rows: list, pred: dict) -> list[str]:
    """speedup-fade's notes on the model: its worst error here, and its figures at the
    published setting (why the magnitude is not a pass condition)."""
    notes = []
    errs = [(abs(r["predicted_speedup"] / r["speedup"] - 1), r["bs"]) for r in rows
            if r.get("predicted_speedup") and r.get("speedup")]
    if errs:
        err, b = max(errs)
        notes.append(f"The analytic model's worst speedup error on this device is {err:.0%} (bs {b}).")
    if pred:
        notes.append(f"The published speedups are a whole engine's (its per-step scheduling "
                     f"and Python included) and the published bs-1 rate is above what an L4's "
                     f"300 GB/s can read per step for OPT-125m's weights; the model with this "
                     f"run's launch costs, the L4 datasheet and context {PUBLISHED_FADE['context']} "
                     f"predicts {fmt_x(sorted(pred.items()))}, so the magnitude is not a pass "
                     f"condition: the shape is.")
    return notes


def judge_ladder_collapse(e: dict) -> dict:
    rows = e["rows"]
    c1, c4 = row_where(rows, arm="collapsed", bs=1), row_where(rows, arm="collapsed", bs=4)
    x1, x4 = row_where(rows, arm="explicit", bs=1), row_where(rows, arm="explicit", bs=4)
    pw = next((r for r in rows if r["arm"] == "piecewise" and r["bs"] == 4), None)
    gain = x4["tok_s"] / c4["tok_s"] - 1
    back = x4["tok_s_per_seq"] / x1["tok_s_per_seq"]
    g_pub = PUBLISHED["ladder_gain"]
    # bs 1 and bs 4 on different kernel plans (skinny fused kernels against cuBLAS): the
    # per-sequence comparison measures the plans, not the graphs, so it is not judged then
    skinny = e.get("info", {}).get("skinny")
    plans_differ = (skinny["1"] != skinny["4"] if isinstance(skinny, dict) and "1" in skinny
                    else skinny[1] != skinny[4] if skinny else 1 <= FAST_ROWS < 4)
    checks = {"with [1, 2], bs 4 did not fall back": c4["ran_as"] != "full",
              "with [1, 2, 4, 8, 16], bs 4 did not replay a full graph": x4["ran_as"] == "full",
              "the explicit list is not faster at bs 4 beyond noise": slower(c4, x4)}
    if not plans_differ:
        checks[f"per-sequence throughput at bs 4 is under {NEAR:.0%} of bs 1's"] = back >= NEAR
    if pw is not None:   # the published fallback was piecewise: its gain against the claim
        lo, hi = ratio_band(pw, x4)
        checks[f"against the piecewise fallback, the gain at bs 4 is not within a factor "
               f"{FACTOR:g} of the published {g_pub:+.1%}"] = \
            hi - 1 >= g_pub / FACTOR and lo - 1 <= g_pub * FACTOR
    measured = (f"bs 4: {x4['tok_s']:.0f} tok/s on [1, 2, 4, 8, 16] against {c4['tok_s']:.0f} on "
                f"[1, 2] ({c4['ran_as']}): {gain:+.0%} total"
                + (f"; against piecewise {x4['tok_s'] / pw['tok_s'] - 1:+.1%}" if pw else "")
                + f"; per-sequence at bs 4 is {back:.0%} of bs 1 with the explicit list, "
                  f"{c4['tok_s_per_seq'] / c1['tok_s_per_seq']:.0%} with [1, 2]")
    notes = [f"Published: the fallback at B=4 was piecewise graphs (attention replayed, the "
             f"linear path eager); the eager fallback here is the worse case, so only the "
             f"piecewise arm is held to {g_pub:+.1%}."]
    if plans_differ:
        notes.append(f"Toy physics: the plan runs batches above {FAST_ROWS} rows on cuBLAS "
                     f"matmuls with separate norm and SwiGLU kernels instead of the skinny fused "
                     f"kernels, so a bs-4 step has more kernels and a different GPU time than "
                     f"bs 1's; the published per-sequence figure ({PUBLISHED['ladder_per_seq']:.0%} "
                     f"of B=1) is an engine whose kernels do not change at B=4, so here the "
                     f"per-sequence ratio ({back:.0%}) is reported, not judged; what carries over "
                     f"is the gain of the explicit list at bs 4, which is.")
    return verdict(checks, measured, notes, gain=gain, per_seq_ratio=back,
                   published=f"{g_pub:+.1%} total throughput at B=4 with [1, 2, 4, 8, 16] against "
                             f"[1, 2]; per-sequence at B=4 {PUBLISHED['ladder_per_seq']:.0%} of B=1",
                   pass_if=f"bs 4 falls back on [1, 2] and replays a full graph on the explicit "
                           f"list, faster beyond noise; "
                           + ("" if plans_differ else f"per-sequence at bs 4 at least {NEAR:.0%} "
                                                      f"of bs 1; ")
                           + f"the gain over the piecewise fallback, with noise, within a "
                             f"factor {FACTOR:g} of {g_pub:+.1%}")


def judge_off_stride(e: dict) -> dict:
    rows, target, info = e["rows"], e["info"]["bs"], e["info"]
    b, a = row_where(rows, arm="before fix", bs=target), row_where(rows, arm="after fix", bs=target)
    slow = b["step_us"] / a["step_us"]
    lo, hi = ratio_band(b, a)
    pub = PUBLISHED["off_stride"]
    checks = {f"before the fix, bs {target} did not run eagerly": b["ran_as"] == "eager",
              f"after the fix, bs {target} did not replay a graph": a["ran_as"] == "full",
              f"the slowdown [{lo:.2f}x, {hi:.2f}x] is not within a factor {FACTOR:g} of the "
              f"published {pub:.1f}x": hi >= pub / FACTOR and lo <= pub * FACTOR}
    measured = (f"bs {target}: {b['step_us']:.0f} us ({b['ran_as']}) on the old ladder (largest "
                f"{b['ladder_max']}) against {a['step_us']:.0f} us ({a['ran_as']}) after the fix: "
                f"{slow:.2f}x slower")
    nb = [r for r in rows if r["arm"] == "before fix" and r["bs"] != target]
    if nb:
        measured += f"; bs {nb[0]['bs']} on the old ladder: {nb[0]['step_us']:.0f} us ({nb[0]['ran_as']})"
    notes = [f"Published: serving throughput of a whole engine at max_num_batched_tokens 700; "
             f"here one decode step at bs {target}, context {info['context']}, eager against "
             f"its graph."]
    if info["context"] != info["context_wanted"]:
        notes.append(f"Scaled down: the context is {info['context']}, not {info['context_wanted']}, "
                     f"so that the KV cache of {target + 1} slots fits in half the free memory.")
    return verdict(checks, measured, notes, slowdown=slow,
                   published=f"about {pub:.1f}x slower off-stride (16639 against 5400 tok/s)",
                   pass_if=f"bs {target} eager before the fix and graphed after; the slowdown, "
                           f"with noise, within a factor {FACTOR:g} of {pub:.1f}x "
                           f"({pub / FACTOR:.2f}x to {pub * FACTOR:.1f}x)")


def judge_padding_waste(e: dict) -> dict:
    rows = e["rows"]
    ex, s8, p2, eg = (row_where(rows, arm=a) for a in ("exact", "stride-8", "pow2", "eager"))
    b8, b64 = vs_exact_band(s8, ex), vs_exact_band(p2, ex)
    checks = {"a graph arm is not faster than eager beyond noise":
              all(slower(eg, r) for r in (ex, s8, p2)),
              "padding to 64 costs nothing measurable against the exact capture": b64[0] > 1,
              "more padded rows ran faster beyond noise": b8[1] >= 1 and b64[1] >= b8[0]}
    parts = [f"{r['arm']} ({r['padded_bs'] or '-'}) {r['step_us']:.0f} us ({r['extra_pct']:+.1%})"
             for r in (ex, s8, p2, eg)]
    per = p2["us_per_padded_row"]
    measured = (f"bs {ex['bs']}: " + ", ".join(parts)
                + (f"; {per:.2f} us per padded row on powers of two" if per is not None else "")
                + f"; pow2 / exact [{b64[0]:.3f}, {b64[1]:.3f}], stride-8 / exact "
                  f"[{b8[0]:.3f}, {b8[1]:.3f}]"
                + (" (paired, 95%)" if p2.get("vs_exact_ci") else " (noise bands)"))
    notes = ["Toy physics: padded rows point at an empty scratch slot at position 0, so they "
             "read no KV history (an engine's padded rows read none either, but its real rows "
             "of a long context make attention a larger share); what they cost here is extra "
             "matmul rows, attention programs and logits."]
    return verdict(checks, measured, notes, published="no published figure",
                   pass_if="every graph arm faster than eager beyond noise; pow2 / exact "
                           "wholly above 1 (its paired interval where the arms ran in one "
                           "rotation); no arm with more padded rows faster beyond its interval")


def judge_pool_growth(e: dict) -> dict:
    rows = e["rows"]
    arm = lambda a: {r["n_sizes"]: r["pool_bytes"] for r in rows if r["arm"] == a}
    sh, small, sep = arm("shared, largest-first"), arm("shared, smallest-first"), arm("separate")
    ns = sorted(sh)
    n = ns[-1]
    grows = all(sh[i] <= sh[j] for i, j in zip(ns, ns[1:])) and sh[n] > sh[ns[0]]
    fixed, per = fit_pool([(k, sh[k]) for k in ns])
    out_b = e["info"].get("output_bytes") or 0
    rest = sh[n] - out_b
    pub = PUBLISHED["pool_bytes"]
    checks = {"the shared pool does not grow with the number of sizes": grows,
              "separate pools do not hold more than the shared pool":
              all(sep[k] >= sh[k] for k in ns if k in sep) and sep[n] > sh[n],
              "largest-first capture holds more than smallest-first": sh[n] <= small[n],
              f"the pool less the logits ({fmt_mib(rest)}) is not within a factor {FACTOR:g} of "
              f"the published {fmt_mib(pub)}": within(rest, pub, FACTOR)}
    measured = (f"shared pool {fmt_mib(sh[ns[0]])} for {ns[0]} size, {fmt_mib(sh[n])} for {n} sizes "
                f"(fit a + c·n: c = {per / MiB:.1f} MiB per size, a = {fixed / MiB:.1f} MiB), of "
                f"which logits {fmt_mib(out_b)} and the rest {fmt_mib(rest)}; separate pools "
                f"{fmt_mib(sep[n])} ({sep[n] / sh[n]:.2f}x); smallest-first {fmt_mib(small[n])} "
                f"({small[n] / sh[n]:.2f}x)")
    notes = [f"The toy's graphs end with the LM head, so each keeps its logits [size, vocab] in "
             f"the pool ({fmt_mib(out_b)} for all {n} sizes, {out_b / sh[n]:.0%} of it); an "
             f"engine's graphs end at the hidden states, so the logits are counted apart.",
             f"Published: {fmt_mib(pub)} for {PUBLISHED['graphs']} graphs (two routines of 23 "
             f"sizes each, OPT-125m on an L4), {pub / PUBLISHED['graphs'] / MiB:.1f} MiB a graph."]
    return verdict(checks, measured, notes, fixed_bytes=fixed, bytes_per_size=per,
                   pool_less_logits=rest,
                   published=f"{fmt_mib(pub)} for {PUBLISHED['graphs']} graphs of OPT-125m",
                   pass_if=f"the shared pool grows with sizes; separate pools hold more, "
                           f"largest-first no more than smallest-first; the full ladder's pool "
                           f"less its logits within a factor {FACTOR:g} of {fmt_mib(pub)}")


def judge_capture_cost(e: dict) -> dict:
    rows, info = e["rows"], e["info"]
    per = sorted(s["warmup_s"] + s["capture_s"] for s in info["sizes"])
    med = per[len(per) // 2]
    warm = sum(s["warmup_s"] for s in info["sizes"]) / max(1e-12, sum(per))
    pub_per = PUBLISHED["capture_s"] / PUBLISHED["graphs"]
    be = [(r["bs"], r["break_even_steps"]) for r in rows if r["break_even_steps"] is not None]
    ladder_be = [(r["bs"], r["ladder_break_even_steps"]) for r in rows
                 if r.get("ladder_break_even_steps") is not None]
    # published break-even: 7 s over the bs-1 step saved (980 -> 2474 tok/s: 1020 -> 404 us)
    pub_be = PUBLISHED["capture_s"] * 1e6 / (1e6 / 980.3 - 1e6 / 2473.6)
    checks = {"no graph size was measured": bool(rows),
              "at some batch size the graph is not faster, so capture never pays back":
              all(r["break_even_steps"] is not None for r in rows),
              f"{med * 1e3:.0f} ms per size is over {WIDE:g}x the published "
              f"{pub_per * 1e3:.0f} ms": med <= WIDE * pub_per,
              f"the whole ladder pays back at the smallest batch after over {WIDE:g}x the "
              f"published {pub_be:.0f} steps": bool(ladder_be) and ladder_be[0][1] <= WIDE * pub_be}
    measured = (f"{med * 1e3:.0f} ms per size (median; max {per[-1] * 1e3:.0f} ms), "
                f"{info['capture_s']:.2f} s for {len(per)} sizes; break-even after "
                + fmt_x(be, ".0f", " steps") + "; the whole ladder's after " + fmt_x(ladder_be, ".0f", " steps"))
    notes = [f"Eager warm-up runs before each capture are {warm:.0%} of it (they include any "
             f"Triton compilation a new shape triggers). The published 7 s also covers "
             f"torch.compile's piecewise graphs; another write-up reports about 1 s per shape."]
    return verdict(checks, measured, notes, median_size_s=med,
                   published=f"{PUBLISHED['capture_s']:.0f} s for {PUBLISHED['graphs']} graphs "
                             f"({pub_per * 1e3:.0f} ms each); break-even about {pub_be:.0f} steps at bs 1",
                   pass_if=f"every batch's graph faster than eager; seconds per size and the "
                           f"whole ladder's break-even steps at the smallest batch at most "
                           f"{WIDE:g}x the published figures (a one-time cost that pays back "
                           f"as soon as published, or sooner)")


def judge_piecewise_vs_full(e: dict) -> dict:
    rows = sorted(e["rows"], key=lambda r: r["bs"])
    r0 = rows[0]
    checks = {"full graphs are slower than piecewise at some batch size beyond noise":
              not any(slower(r, r, "full_", "piecewise_") for r in rows),
              f"piecewise costs nothing measurable at bs {r0['bs']}": slower(r0, r0, "piecewise_", "full_"),
              f"piecewise is not faster than eager at bs {r0['bs']}": slower(r0, r0, "eager_", "piecewise_")}
    measured = (f"piecewise / full: {fmt_x([(r['bs'], r['piecewise_over_full']) for r in rows])}; "
                f"eager / full at bs {r0['bs']}: {r0['eager_step_us'] / r0['full_step_us']:.2f}x")
    notes = [f"Attention runs eagerly between replays: {r0['attention_us_per_layer']:.1f} us per "
             f"layer at bs {r0['bs']} ({e['info']['n_layers']} layers, "
             f"{e['info']['n_layers'] + 1} replays a step)."]
    return verdict(checks, measured, notes, published="no published figure",
                   pass_if=f"full never slower than piecewise beyond noise; at bs {r0['bs']} "
                           f"piecewise slower than full and faster than eager beyond noise")


def judge_memory_headroom(e: dict) -> dict:
    rows, info = sorted(e["rows"], key=lambda r: r["n_sizes"]), e["info"]
    toks = [r["kv_tokens"] for r in rows]
    last = rows[-1]
    kv = info["kv_bytes_per_token"]
    pub_share = PUBLISHED["pool_bytes"] / PUBLISHED["budget_bytes"]
    share = last["share_lost"]
    checks = {"KV tokens left do not fall with more captured sizes":
              all(b <= a for a, b in zip(toks, toks[1:])) and toks[-1] < toks[0]}
    fall = "KV tokens fall as sizes are added"
    if "budget" in info:       # an engine's start-up (--gpu-memory-utilization): analysis.budget
        checks, fall = budget_checks(rows)
    checks[f"the full ladder's pool takes {share:.1%} of the KV budget, over "
           f"{HEADROOM_MAX:.0%}"] = share is not None and share <= HEADROOM_MAX
    measured = (f"budget {fmt_mib(info['budget_bytes'])} ({info['budget_source']}) holds {toks[0]} "
                f"KV tokens without graphs; the pool of {last['n_sizes']} sizes "
                f"({fmt_mib(last['pool_bytes'])}) leaves {toks[-1]} "
                f"(-{share:.2%}, {last['tokens_lost'] / max(1, last['n_sizes']):.0f} "
                f"tokens per size)")
    notes = [f"KV bytes per token: {info['kv_formula']} = {kv} B. The published 0.41 GiB pool of "
             f"46 OPT-125m graphs would be {int(PUBLISHED['pool_bytes'] // kv)} tokens of this "
             f"model's cache."]
    if "budget" in info:
        measured, more = budget_text(info, rows, measured)
        notes += more
    return verdict(checks, measured, notes,
                   published=f"0.41 GiB of graphs in a {PUBLISHED['budget_bytes'] / 1e9:.0f} GB "
                             f"budget (gpu_memory_utilization 0.5 of an L4): {pub_share:.1%}",
                   pass_if=f"{fall}; the full ladder's pool at most "
                           f"{HEADROOM_MAX:.0%} of the budget (published {pub_share:.1%})",
                   predicted=f"{pub_share:.1%} of the budget at the published setting")


JUDGES = {"speedup-fade": judge_speedup_fade, "ladder-collapse": judge_ladder_collapse,
          "off-stride": judge_off_stride, "padding-waste": judge_padding_waste,
          "pool-growth": judge_pool_growth, "capture-cost": judge_capture_cost,
          "piecewise-vs-full": judge_piecewise_vs_full, "memory-headroom": judge_memory_headroom}


def judge(name: str, entry: dict) -> dict:
    """The verdict of experiment `name` on its saved entry (measured, held, why, notes, derived)."""
    return JUDGES[name](entry)
