"""Verdicts of `microbench reproduce`: pure functions of saved measurements (CPU-testable).

Comparisons are noise-aware, as in `stats.speedup_noise`: a is slower than b when

    t_a > t_b · (1 + n_a + n_b),   n = max(3%, (p80 - p20) / median)

since a ratio's relative error is about the sum of its parts'. Each rule was fixed before any
measurement and is never tuned to pass.
"""
from __future__ import annotations

from microbench.stats import check_shape, fit_pool, row_noise

MiB, GiB = 1 << 20, 1 << 30
NOISE_FLOOR = 0.03
NEAR = 0.8            # "back near bs 1": per-sequence throughput at least 80% of bs 1's


# ---- pure helpers (CPU-testable) -----------------------------------------------------------
def noise(row: dict, p: str = "") -> float:
    """Relative spread of the timing `{p}step_us` (with `{p}p20`, `{p}p80`), at least 3%."""
    return row_noise(row, p, NOISE_FLOOR)


def slower(a: dict, b: dict, pa: str = "", pb: str = "") -> bool:
    """a's step (prefix pa) is slower than b's (prefix pb) beyond both timings' noise."""
    return a[f"{pa}step_us"] > b[f"{pb}step_us"] * (1 + noise(a, pa) + noise(b, pb))


def _row(rows, **match):
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


def _x(vals, spec=".2f", unit="x"):
    return ", ".join(f"{v:{spec}}{unit} at bs {b}" for b, v in vals)


def _mib(n):
    return f"{n / MiB:.1f} MiB" if n < GiB else f"{n / GiB:.2f} GiB"


# ---- verdicts: pure functions of a saved entry ---------------------------------------------
def judge_speedup_fade(e: dict) -> dict:
    rows = sorted(e["rows"], key=lambda r: r["bs"])
    sc = check_shape(rows)
    first = rows[0]
    errs = [(abs(r["predicted_speedup"] / r["speedup"] - 1), r["bs"]) for r in rows
            if r.get("predicted_speedup") and r.get("speedup")]
    notes = [f"Published bs-1 speedup for OPT-125m on an L4: about 2.5x; here {first['speedup']:.1f}x"
             f" at bs {first['bs']}. The eager step takes {first['eager_step_us']:.0f} us and the "
             f"graph step {first['graph_step_us']:.0f} us: the graph removes "
             f"{1 - first['graph_step_us'] / first['eager_step_us']:.0%} of the eager step, the "
             f"time the GPU spends waiting on the host's kernel launches."]
    if errs:
        err, b = max(errs)
        notes.append(f"The analytic model's worst speedup error is {err:.0%} (bs {b}).")
    return dict(held=bool(sc["held"]), why=sc["why"], notes=notes, derived=dict(shape_check=sc),
                measured=f"speedup {_x([(r['bs'], r['speedup']) for r in rows])}; model "
                         f"{_x([(r['bs'], r['predicted_speedup']) for r in rows if r.get('predicted_speedup')])}")


def judge_ladder_collapse(e: dict) -> dict:
    rows = e["rows"]
    c1, c4 = _row(rows, arm="collapsed", bs=1), _row(rows, arm="collapsed", bs=4)
    x1, x4 = _row(rows, arm="explicit", bs=1), _row(rows, arm="explicit", bs=4)
    gain = x4["tok_s"] / c4["tok_s"] - 1
    back = x4["tok_s_per_seq"] / x1["tok_s_per_seq"]
    checks = {"with [1, 2], bs 4 did not fall back": c4["ran_as"] != "full",
              "with [1, 2, 4, 8, 16], bs 4 did not replay a full graph": x4["ran_as"] == "full",
              "the explicit list is not faster at bs 4 beyond noise": slower(c4, x4),
              f"per-sequence throughput at bs 4 is under {NEAR:.0%} of bs 1's": back >= NEAR}
    measured = (f"bs 4: {x4['tok_s']:.0f} tok/s on [1, 2, 4, 8, 16] against {c4['tok_s']:.0f} on "
                f"[1, 2] ({c4['ran_as']}): {gain:+.0%} total; per-sequence at bs 4 is {back:.0%} "
                f"of bs 1 with the explicit list, {c4['tok_s_per_seq'] / c1['tok_s_per_seq']:.0%} "
                f"with [1, 2]")
    notes = [f"Published: +18.5% total at B=4, so the fallback step took about 1.19x the graph "
             f"step there; here the fallback step takes {c4['step_us'] / x4['step_us']:.2f}x it."]
    pw = [r for r in rows if r["arm"] == "piecewise" and r["bs"] == 4]
    if pw:
        notes.append(f"Had bs 4 run piecewise graphs instead ({pw[0]['step_us']:.0f} us a step), "
                     f"the explicit list would gain {x4['tok_s'] / pw[0]['tok_s'] - 1:+.0%}.")
    return _verdict(checks, measured, notes, gain=gain, per_seq_ratio=back)


def judge_off_stride(e: dict) -> dict:
    rows, target = e["rows"], e["info"]["bs"]
    b, a = _row(rows, arm="before fix", bs=target), _row(rows, arm="after fix", bs=target)
    slow = b["step_us"] / a["step_us"]
    checks = {f"before the fix, bs {target} did not run eagerly": b["ran_as"] == "eager",
              f"after the fix, bs {target} did not replay a graph": a["ran_as"] == "full",
              "the eager step is not slower beyond noise": slower(b, a)}
    measured = (f"bs {target}: {b['step_us']:.0f} us ({b['ran_as']}) on the old ladder (largest "
                f"{b['ladder_max']}) against {a['step_us']:.0f} us ({a['ran_as']}) after the fix: "
                f"{slow:.2f}x slower")
    nb = [r for r in rows if r["arm"] == "before fix" and r["bs"] != target]
    if nb:
        measured += f"; bs {nb[0]['bs']} on the old ladder: {nb[0]['step_us']:.0f} us ({nb[0]['ran_as']})"
    info = e["info"]
    notes = [f"Published: about 3x slower; here {slow:.2f}x, at context {info['context']}."]
    if info["context"] != info["context_wanted"]:
        notes.append(f"Scaled down: the context is {info['context']}, not {info['context_wanted']}, "
                     f"so that the KV cache of {target + 1} slots fits in half the free memory.")
    return _verdict(checks, measured, notes, slowdown=slow)


def judge_padding_waste(e: dict) -> dict:
    rows = e["rows"]
    ex, s8, p2, eg = (_row(rows, arm=a) for a in ("exact", "stride-8", "pow2", "eager"))
    checks = {"a graph arm is not faster than eager beyond noise":
              all(slower(eg, r) for r in (ex, s8, p2)),
              "padding to 64 costs nothing measurable against the exact capture": slower(p2, ex),
              "more padded rows ran faster beyond noise":
              not slower(ex, s8) and not slower(s8, p2)}
    parts = [f"{r['arm']} ({r['padded_bs'] or '-'}) {r['step_us']:.0f} us ({r['extra_pct']:+.1%})"
             for r in (ex, s8, p2, eg)]
    per = p2["us_per_padded_row"]
    measured = (f"bs {ex['bs']}: " + ", ".join(parts)
                + (f"; {per:.2f} us per padded row on powers of two" if per is not None else ""))
    notes = ["Padded rows point at an empty scratch slot at position 0, so they read no KV "
             "history: what they cost is extra matmul rows, attention programs and logits."]
    return _verdict(checks, measured, notes)


def judge_pool_growth(e: dict) -> dict:
    rows = e["rows"]
    arm = lambda a: {r["n_sizes"]: r["pool_bytes"] for r in rows if r["arm"] == a}
    sh, small, sep = arm("shared, largest-first"), arm("shared, smallest-first"), arm("separate")
    ns = sorted(sh)
    n = ns[-1]
    grows = all(sh[i] <= sh[j] for i, j in zip(ns, ns[1:])) and sh[n] > sh[ns[0]]
    fixed, per = fit_pool([(k, sh[k]) for k in ns])
    checks = {"the shared pool does not grow with the number of sizes": grows,
              "separate pools do not hold more than the shared pool":
              all(sep[k] >= sh[k] for k in ns if k in sep) and sep[n] > sh[n],
              "largest-first capture holds more than smallest-first": sh[n] <= small[n]}
    measured = (f"shared pool {_mib(sh[ns[0]])} for {ns[0]} size, {_mib(sh[n])} for {n} sizes "
                f"(fit a + c·n: c = {per / MiB:.1f} MiB per size, a = {fixed / MiB:.1f} MiB); separate pools "
                f"{_mib(sep[n])} ({sep[n] / sh[n]:.2f}x); smallest-first {_mib(small[n])} "
                f"({small[n] / sh[n]:.2f}x)")
    notes = [f"Published: 0.41 GiB for 46 OPT-125m graphs on an L4, about 9.1 MiB each; tens of "
             f"MB per shape for small models. Here {sh[n] / n / MiB:.1f} MiB per size on average."]
    out_b = e["info"].get("output_bytes")
    if out_b:
        notes.append(f"The toy's graphs end with the LM head, so each keeps its logits "
                     f"[size, vocab] in the pool: {_mib(out_b)} for "
                     f"all {n} sizes, {out_b / sh[n]:.0%} of the shared pool.")
    return _verdict(checks, measured, notes, fixed_bytes=fixed, bytes_per_size=per)


def judge_capture_cost(e: dict) -> dict:
    rows, info = e["rows"], e["info"]
    per = sorted(s["warmup_s"] + s["capture_s"] for s in info["sizes"])
    med = per[len(per) // 2]
    warm = sum(s["warmup_s"] for s in info["sizes"]) / max(1e-12, sum(per))
    checks = {"no graph size was measured": bool(rows),
              "at some batch size the graph is not faster, so capture never pays back":
              all(r["break_even_steps"] is not None for r in rows)}
    be = [(r["bs"], r["break_even_steps"]) for r in rows if r["break_even_steps"] is not None]
    measured = (f"{med * 1e3:.0f} ms per size (median; max {per[-1] * 1e3:.0f} ms), "
                f"{info['capture_s']:.2f} s for {len(per)} sizes; break-even after "
                + _x(be, ".0f", " steps"))
    notes = [f"Published: about 1 s per shape in one write-up, 7 s for 46 graphs (0.15 s each) "
             f"in another; here {med * 1e3:.0f} ms per size. Eager warm-up runs before each "
             f"capture are {warm:.0%} of it (they include any Triton compilation a new shape "
             f"triggers)."]
    return _verdict(checks, measured, notes, median_size_s=med)


def judge_piecewise_vs_full(e: dict) -> dict:
    rows = sorted(e["rows"], key=lambda r: r["bs"])
    r0 = rows[0]
    checks = {"full graphs are slower than piecewise at some batch size beyond noise":
              not any(slower(r, r, "full_", "piecewise_") for r in rows),
              f"piecewise costs nothing measurable at bs {r0['bs']}": slower(r0, r0, "piecewise_", "full_"),
              f"piecewise is not faster than eager at bs {r0['bs']}": slower(r0, r0, "eager_", "piecewise_")}
    measured = (f"piecewise / full: {_x([(r['bs'], r['piecewise_over_full']) for r in rows])}; "
                f"eager / full at bs {r0['bs']}: {r0['eager_step_us'] / r0['full_step_us']:.2f}x")
    notes = [f"Attention runs eagerly between replays: {r0['attention_us_per_layer']:.1f} us per "
             f"layer at bs {r0['bs']} ({e['info']['n_layers']} layers, "
             f"{e['info']['n_layers'] + 1} replays a step)."]
    return _verdict(checks, measured, notes)


def judge_memory_headroom(e: dict) -> dict:
    rows, info = sorted(e["rows"], key=lambda r: r["n_sizes"]), e["info"]
    toks = [r["kv_tokens"] for r in rows]
    last = rows[-1]
    checks = {"KV tokens left do not fall with more captured sizes":
              all(b <= a for a, b in zip(toks, toks[1:])) and toks[-1] < toks[0]}
    measured = (f"budget {_mib(info['budget_bytes'])} ({info['budget_source']}) holds {toks[0]} "
                f"KV tokens without graphs; the pool of {last['n_sizes']} sizes "
                f"({_mib(last['pool_bytes'])}) leaves {toks[-1]} "
                f"(-{last['share_lost']:.2%}, {last['tokens_lost'] / max(1, last['n_sizes']):.0f} "
                f"tokens per size)")
    kv = info["kv_bytes_per_token"]
    notes = [f"KV bytes per token: {info['kv_formula']} = {kv} B. The published 0.41 GiB pool of "
             f"46 OPT-125m graphs would be {int(0.41 * GiB // kv)} tokens of this model's cache."]
    return _verdict(checks, measured, notes)


def _verdict(checks: dict, measured: str, notes: list, **derived) -> dict:
    """checks: failure reason -> passed. Held when every check passed."""
    failed = [why for why, ok in checks.items() if not ok]
    return dict(held=not failed, why="; ".join(failed) or "held", measured=measured,
                notes=notes, derived=derived)


# ---- GPU side ------------------------------------------------------------------------------


JUDGES = {"speedup-fade": judge_speedup_fade, "ladder-collapse": judge_ladder_collapse,
          "off-stride": judge_off_stride, "padding-waste": judge_padding_waste,
          "pool-growth": judge_pool_growth, "capture-cost": judge_capture_cost,
          "piecewise-vs-full": judge_piecewise_vs_full, "memory-headroom": judge_memory_headroom}


def judge(name: str, entry: dict) -> dict:
    """The verdict of experiment `name` on its saved entry (measured, held, why, notes, derived)."""
    return JUDGES[name](entry)
