"""The experiments of `microbench reproduce`: eight published CUDA-graph phenomena, rebuilt on
the toy decoder (run by bench.reproduce, in the lab of bench.lab).

Each experiment is a pair: `run(lab)` measures on the GPU and returns rows (dicts whose field
order is the CSV's column order) and `info`; its judge (analysis.verdicts.JUDGES) is a pure
function of the saved entry that says what was measured and whether the phenomenon held. The
report is rendered from the saved run by `microbench.report.plots.render_report`.

Arms that are compared run in one rotation where they can (speedup-fade, padding-waste), so
their ratios are paired with bootstrap intervals; the rest compare noise-aware, as in
`stats.speedup_noise`: a is slower than b when t_a > t_b · (1 + n_a + n_b), with
n = max(3%, (p80 - p20) / median), a ratio's relative error being about the sum of its parts'.
"""
from __future__ import annotations

from dataclasses import dataclass

from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.shapes import torch_dtype
from microbench.engine.ladders import pow2_capture_sizes, vllm_capture_sizes
from microbench.engine.memory import kv_bytes_per_token
from microbench.bench.headroom import run_budget
from microbench.bench.lab import Lab, build_decoder, free_memory, timed_row
from microbench.bench.sweep_config import max_seq_for
from microbench.stats import break_even_steps

COLLAPSED, EXPLICIT = [1, 2], [1, 2, 4, 8, 16]
OFF_STRIDE = dict(max_num_seqs=700, max_num_batched_tokens=700, max_capture_size=1024, context=128)
PAD_BS = 37   # padding-waste's batch; its arms' timer prefixes, the exact capture the reference:
PAD_PREFIX = {"exact": "graph_", "stride-8": "stride8_", "pow2": "pow2_", "eager": "eager_"}
MiB, GiB = 1 << 20, 1 << 30


def pool_ns(n_max: int) -> list[int]:
    """Numbers of captured sizes to measure: 1, 2, 4, ... below n_max, then n_max."""
    ns, n = [], 1
    while n < n_max:
        ns.append(n)
        n *= 2
    return ns + [n_max]


def headroom_rows(pool_rows: list[dict], budget: int, per_token: int) -> list[dict]:
    """KV tokens left in `budget` bytes once the pool of n captured sizes is taken:
    tokens(n) = floor((budget - pool(n)) / per_token), never below 0; n = 0 is the baseline."""
    base = max(0, budget // per_token)
    rows = []
    for r in [dict(n_sizes=0, largest_size=None, pool_bytes=0)] + list(pool_rows):
        toks = max(0, (budget - r["pool_bytes"]) // per_token)
        rows.append(dict(n_sizes=r["n_sizes"], largest_size=r["largest_size"],
                         pool_bytes=r["pool_bytes"], kv_tokens=toks, tokens_lost=base - toks,
                         share_lost=(base - toks) / base if base else None))
    return rows


def budget_rows(costs: list[dict], budget: dict) -> list[dict]:
    """headroom_rows of an engine's start-up (bench.headroom.run_budget): the KV cache its
    budget left stands for the budget, the sizes as captured (largest first) for n, and each
    row keeps its size's own pool growth and token cost (engine.memory.size_costs)."""
    first = costs[0]["size"] if costs else None    # every size skipped: the baseline alone
    series = [dict(n_sizes=c["order"], largest_size=first, pool_bytes=c["pool_bytes"])
              for c in costs]
    rows = headroom_rows(series, budget["kv_cache_bytes"], budget["kv_bytes_per_token"])
    blank = {k: None for k in (costs[0] if costs else {}) if k != "pool_bytes"}
    return [dict(rows[0], **blank)] + [dict(h, **{k: v for k, v in c.items() if k != "pool_bytes"})
                                       for h, c in zip(rows[1:], costs)]


def padding_costs(rows: list[dict]) -> list[dict]:
    """Adds, per arm, padded rows and the extra step time against the exact capture:
    extra = t_arm - t_exact, and extra / padded rows (us per padded row)."""
    exact = next(r for r in rows if r["arm"] == "exact")["step_us"]
    out = []
    for r in rows:
        pad = (r["padded_bs"] - r["bs"]) if r["padded_bs"] else 0
        extra = r["step_us"] - exact
        out.append(dict(r, padded_rows=pad, extra_us=extra, extra_pct=extra / exact,
                        us_per_padded_row=extra / pad if pad else None))
    return out


# ---- the experiments -----------------------------------------------------------------------
def run_speedup_fade(lab: Lab) -> dict:
    bs = list(lab.cfg.bs)
    launch = lab.launch()
    rows = []
    for r in lab.pair(bs):   # eager and graph in rotation: a paired speedup with its interval
        e, g = r["eager_step_us"], r["graph_step_us"]
        rows.append(dict(bs=r["bs"], padded_bs=r["padded_bs"], ran_as=r["ran_as"],
                         eager_step_us=e, eager_p20=r["eager_p20"], eager_p80=r["eager_p80"],
                         graph_step_us=g, graph_p20=r["graph_p20"], graph_p80=r["graph_p80"],
                         speedup=r["speedup"], speedup_ci=r.get("speedup_ci"),
                         stable=r.get("stable"), eager_tok_s=r["bs"] / e * 1e6,
                         graph_tok_s=r["bs"] / g * 1e6,
                         **{k: r[k] for k in ("max_abs_diff", "engine_eager_step_us",
                                              "engine_eager_speedup", "engine_eager_speedup_ci",
                                              "engine_eager_max_abs_diff") if k in r}))
    info = dict(launch=launch)
    if lab.predict is not None:   # the model's columns (predicted_*) and its device profile
        info["profile"] = lab.predict(rows, lab.dec, launch, lab.gpu(), lab.context,
                                      torch_dtype(lab.cfg.dtype).itemsize)
    return dict(rows=rows, info=info)


def run_ladder_collapse(lab: Lab) -> dict:
    arms = [("collapsed", "1,2", [("full", COLLAPSED, [1, 4])]),
            ("piecewise", "1,2 full; 1,2,4,8,16 piecewise",
             [("full", COLLAPSED, [1]), ("piecewise", EXPLICIT, [4])]),
            ("explicit", "1,2,4,8,16", [("full", EXPLICIT, [1, 4])])]
    rows = []
    for arm, sizes, parts in arms:
        for mode, capture, bs in parts:
            rows += [dict(arm=arm, capture_sizes=sizes, **r) for r in lab.measure(mode, capture, bs)]
    # the plan that ran bs 1 and bs 4, recorded so the verdict judges the run, not today's code
    return dict(rows=rows, info=dict(skinny={b: lab.dec.skinny(b) for b in (1, 4)}))


def run_off_stride(lab: Lab) -> dict:
    p = OFF_STRIDE
    kw = dict(max_num_seqs=p["max_num_seqs"], max_num_batched_tokens=p["max_num_batched_tokens"],
              max_capture_size=p["max_capture_size"])
    before = vllm_capture_sizes(**kw, off_stride_fix=False)
    after = vllm_capture_sizes(**kw, off_stride_fix=True)
    target = p["max_num_batched_tokens"]
    shape, elt = lab.cfg.shape, torch_dtype(lab.cfg.dtype).itemsize
    context, free = p["context"], free_memory()
    # KV cache of target + 1 slots; halve the context until it fits in half the free memory
    while context > 16 and kv_bytes_per_token(shape, elt) * max_seq_for(context) * (target + 1) > free / 2:
        context //= 2
    lab.say(f"building a second decoder: max batch {target}, context {context}")
    sub = type(lab)(lab.cfg, build_decoder(lab.cfg, target, context), context, lab.say)
    try:
        rows = [dict(arm="before fix", ladder_max=before[-1], **r)
                for r in sub.measure("full", before, [before[-1], target])]
        rows += [dict(arm="after fix", ladder_max=after[-1], **r)
                 for r in sub.measure("full", after, [target])]
    finally:
        del sub
        free_memory()
    info = dict(kw, bs=target, context=context, context_wanted=p["context"],
                ladder_before=before, ladder_after=after)
    return dict(rows=rows, info=info)


def run_padding_waste(lab: Lab) -> dict:
    """Batch PAD_BS on each ladder's graph (the one size it pads to, captured alone) and eagerly,
    the four sampled in one rotation (eager first: the graphs' logits are checked against it),
    so each arm's ratio to the exact capture is paired (`vs_exact`, `vs_exact_ci`)."""
    arms = {"eager": [], "exact": [PAD_BS], "stride-8": vllm_capture_sizes(max_num_seqs=32),
            "pow2": pow2_capture_sizes(64)}
    pads = {a: PaddingDispatcher(s).pad(PAD_BS) if s else None for a, s in arms.items()}
    runners = {}
    try:
        for a in arms:
            runners[a] = lab.capture([pads[a]] if pads[a] else [], "full" if pads[a] else "none")
        x = lab.inputs(PAD_BS)
        row = lab.rotation({PAD_PREFIX[a]: (lambda r=r: r.step_packed(x))
                            for a, r in runners.items()}, PAD_BS)
    finally:
        for r in runners.values():
            r.close()
    rows = [dict(arm=a, **pad_row(row, PAD_PREFIX[a], pads[a]))
            for a in ("exact", "stride-8", "pow2", "eager")]
    return dict(rows=padding_costs(rows), info=dict(ladders=arms))


def pad_row(row: dict, p: str, pad) -> dict:
    """One padding-waste arm from the rotation's row: its timing, and its paired ratio to the
    exact capture (`vs_exact`, with `vs_exact_ci` where the rotation gave an interval)."""
    t = {k: row[p + k] for k in ("step_us", "p20", "p80", "n", "event_us")}
    out = timed_row(PAD_BS, pad, "full" if pad else "eager", t)
    key = "" if p == "eager_" else p
    ratio = ((1.0, None) if p == "graph_"
             else (row.get(f"{key}speedup"), row.get(f"{key}speedup_ci")))
    return dict(out, vs_exact=ratio[0], vs_exact_ci=ratio[1], stable=row.get("stable"),
                max_abs_diff=row.get(f"{p}max_abs_diff"))


def run_pool_growth(lab: Lab) -> dict:
    ladder = vllm_capture_sizes()
    ns = pool_ns(len(ladder))
    rows = list(lab.pool_largest_first(ladder, ns))
    for arm, pool, order in (("shared, smallest-first", "shared", "smallest-first"),
                             ("separate", "separate", "smallest-first")):
        # one capture, smallest first: the pool after the first n captures is the pool of the
        # first n sizes (separate pools are independent, so their order does not matter)
        r = lab.capture(ladder, pool=pool, order=order)
        grown = {s["size"]: s["pool_bytes"] for s in r.report["sizes"]}
        r.close()
        rows += [dict(arm=arm, n_sizes=n, largest_size=ladder[n - 1],
                      pool_bytes=sum(grown.get(s, 0) for s in ladder[:n])) for n in ns]
    for r in rows:
        r["mib_per_size"] = r["pool_bytes"] / r["n_sizes"] / MiB
    out_bytes = sum(ladder) * lab.cfg.shape.vocab * torch_dtype(lab.cfg.dtype).itemsize
    return dict(rows=rows, info=dict(ladder=ladder, output_bytes=out_bytes))


def run_capture_cost(lab: Lab) -> dict:
    ladder = vllm_capture_sizes()
    r = lab.capture(ladder)
    rep = r.report
    r.close()
    bs = [b for b in lab.cfg.bs if b <= ladder[-1]]
    per = {s["size"]: s for s in rep["sizes"]}
    rows = []
    for e, g in zip(lab.measure("none", [], bs), lab.measure("full", ladder, bs)):
        s = per.get(g["padded_bs"])
        one = s["warmup_s"] + s["capture_s"] if s else None
        be = lambda cost: break_even_steps(cost, e["step_us"], g["step_us"]) if cost else None
        rows.append(dict(bs=e["bs"], padded_bs=g["padded_bs"], size_capture_s=one,
                         eager_step_us=e["step_us"], graph_step_us=g["step_us"],
                         saved_us=e["step_us"] - g["step_us"], break_even_steps=be(one),
                         ladder_capture_s=rep["capture_s"], ladder_break_even_steps=be(rep["capture_s"])))
    return dict(rows=rows, info=dict(ladder=ladder, sizes=rep["sizes"], capture_s=rep["capture_s"],
                                     skipped=rep["skipped"]))


def run_piecewise_vs_full(lab: Lab) -> dict:
    bs, n_layers = list(lab.cfg.bs), lab.cfg.shape.n_layers
    rows = []
    for e, f, p in zip(lab.measure("none", [], bs), lab.measure("full", bs, bs),
                       lab.measure("piecewise", bs, bs)):
        row = dict(bs=e["bs"])
        for name, t in (("eager", e), ("full", f), ("piecewise", p)):
            row.update({f"{name}_step_us": t["step_us"], f"{name}_p20": t["p20"],
                        f"{name}_p80": t["p80"]})
        row.update(piecewise_over_full=p["step_us"] / f["step_us"],
                   attention_us_per_layer=(p["step_us"] - f["step_us"]) / n_layers)
        rows.append(row)
    return dict(rows=rows, info=dict(n_layers=n_layers))


def run_memory_headroom(lab: Lab) -> dict:
    ladder = vllm_capture_sizes()
    if lab.cfg.gpu_memory_utilization:   # an engine's order: profile, KV cache, then capture
        res = run_budget(lab.dec, ladder, lab.cfg.gpu_memory_utilization, lab.context, lab.say,
                         lab.on_capture, seed=lab.cfg.seed)
        info = dict(res["info"], budget_source=f"--gpu-memory-utilization "
                                               f"{lab.cfg.gpu_memory_utilization:g}")
        b = info["budget"]
        info.update(budget_bytes=b["kv_cache_bytes"], kv_bytes_per_token=b["kv_bytes_per_token"],
                    kv_formula=_kv_formula(lab))
        return dict(rows=budget_rows(res["rows"], b), info=info)
    series = lab.pool_largest_first(ladder, pool_ns(len(ladder)))
    s, elt = lab.cfg.shape, torch_dtype(lab.cfg.dtype).itemsize
    per_token = kv_bytes_per_token(s, elt)
    if lab.cfg.memory_budget_gib:
        budget, source = int(lab.cfg.memory_budget_gib * GiB), "--memory-budget"
    else:
        budget, source = lab.cache["free_after_decoder"], "free memory after weights and KV cache"
    info = dict(budget_bytes=budget, budget_source=source, kv_bytes_per_token=per_token,
                kv_formula=_kv_formula(lab))
    return dict(rows=headroom_rows(series, budget, per_token), info=info)


def _kv_formula(lab: Lab) -> str:
    s, elt = lab.cfg.shape, torch_dtype(lab.cfg.dtype).itemsize
    return f"2 · {s.n_layers} layers · {s.n_kv_heads} KV heads · {s.head_dim} · {elt} B"


@dataclass(frozen=True)
class Experiment:
    name: str
    expected: str
    source: str
    method: str
    run: object
    max_batch: object    # cfg -> largest batch the shared decoder must hold


VLLM_MAX = vllm_capture_sizes()[-1]
EXPERIMENTS = {e.name: e for e in (
    Experiment("speedup-fade",
               "A full graph's speedup over eager is largest at batch 1 and fades as the batch "
               "grows, never below 1 (published: about 2.5x at bs 1, 1.6x at 8, 1.13x at 64).",
               "An OPT-125m measurement on an NVIDIA L4; a Llama-3.1-8B comparison reports 29% "
               "lower bs-1 latency on an H200 and under 1% on an L40S.",
               "Eager against one full graph per batch size (exact capture); the prediction uses "
               "a device profile measured in this run (launch costs, copy bandwidth, matrix rate).",
               run_speedup_fade, lambda c: max(c.bs)),
    Experiment("ladder-collapse",
               "With a capture list of [1, 2], batch 4 falls off the graphs; listing "
               "[1, 2, 4, 8, 16] keeps it on a full graph, and per-sequence throughput at batch 4 "
               "comes back near batch 1's (published: +18.5% total throughput at B=4).",
               "A release note of a vLLM-based tool.",
               "Three arms at bs 1 and 4: [1, 2] (bs 4 runs eagerly, as in vLLM when no graph "
               "covers it); [1, 2] full graphs with piecewise graphs for [1, 2, 4, 8, 16] (bs 4 "
               "runs piecewise: vLLM's FULL_AND_PIECEWISE fallback when its piecewise sizes cover "
               "the batch; a bound, not the default case); [1, 2, 4, 8, 16]. Only the graphs a "
               "batch routes to are captured.",
               run_ladder_collapse, lambda c: 4),
    Experiment("off-stride",
               "With max_num_batched_tokens 700 and a capture cap of 1024, vLLM's old ladder stops "
               "at 688 (stride 16), so bs 700 runs eagerly; the fix appends 700 and restores the "
               "graph (published: about 3x slower without it).",
               "The description of vLLM pull request #40734.",
               f"A second decoder holding 700 sequences at context {OFF_STRIDE['context']} "
               "(short, so the KV cache fits easily); bs 700 on each ladder, and bs 688 on the old "
               "one for reference.",
               run_off_stride, lambda c: 1),
    Experiment("padding-waste",
               f"Batch {PAD_BS} pads to 40 on a stride-8 ladder and to 64 on powers of two; the "
               "padded rows cost step time against an exact capture, growing with their number, "
               "while every graph arm still beats eager.",
               "No published figure: the expectation follows from the dispatcher's rule (a batch "
               "runs the smallest captured size at or above it).",
               f"bs {PAD_BS} on vLLM's ladder for 32 sequences (stride 8), on powers of two up to "
               f"64, on a graph captured for exactly {PAD_BS}, and eagerly.",
               run_padding_waste, lambda c: 64),
    Experiment("pool-growth",
               "The graph pool grows with the number of captured sizes; separate pools hold more "
               "than one shared pool, and largest-first capture no more than smallest-first "
               "(published: tens of MB per shape for small models; 0.41 GiB for 46 graphs of "
               "OPT-125m).",
               "A lab write-up running OPT-125m on an L4 (0.41 GiB for 46 graphs).",
               "The first n sizes of vLLM's default ladder (max_num_seqs 256) captured into one "
               "shared pool largest first (one capture per n), shared smallest first and separate "
               "pools (one capture each, pool after the first n); pool bytes from the allocator's "
               "segments of the pool. Fit: bytes(n) = a + c·n.",
               run_pool_growth, lambda c: VLLM_MAX),
    Experiment("capture-cost",
               "Capture is a one-time cost per size (published: about 1 s per shape in one "
               "write-up, 7 s for 46 graphs in another) that faster steps pay back after a "
               "finite number of steps.",
               "Two write-ups on vLLM start-up: one per shape, one for a whole ladder of 46 graphs.",
               "vLLM's default ladder captured largest first: warm-up and capture seconds per "
               "size; break-even steps = capture seconds / (eager - graph step), per batch size, "
               "for its own size and for the whole ladder.",
               run_capture_cost, lambda c: max(VLLM_MAX, *c.bs)),
    Experiment("piecewise-vs-full",
               "Piecewise graphs, with attention run eagerly between them, sit between full "
               "graphs and eager: slower than full by the attention launches, faster than eager.",
               "No published figure: vLLM's PIECEWISE mode leaves attention outside the graphs.",
               "Eager, full and piecewise step time per batch size, each graph captured exactly.",
               run_piecewise_vs_full, lambda c: max(c.bs)),
    Experiment("memory-headroom",
               "Under a fixed memory budget, every captured size's pool takes KV-cache tokens "
               "away: the tokens left fall as sizes are added.",
               "No published figure beyond the pool sizes of pool-growth; the arithmetic is the "
               "KV cache's bytes per token.",
               "KV tokens = (budget - pool bytes of the first n sizes, captured largest first) / "
               "KV bytes per token, from the pool sizes measured as in pool-growth. With "
               "--gpu-memory-utilization, an engine's start-up instead: profile the largest "
               "batch's eager step, allocate the KV cache that utilization · total memory "
               "leaves after weights and activations, capture the ladder after it (a size that "
               "runs out of memory is skipped and reported), and charge each size's pool growth "
               "in KV tokens.",
               run_memory_headroom, lambda c: VLLM_MAX),
)}
NAMES = tuple(EXPERIMENTS)
