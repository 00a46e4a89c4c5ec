"""Tables from saved runs (plots and reports read files, never live objects): each kind's
document (formats.Doc: a header line, tables, footer lines), printed in any of formats.FORMATS.
"""
from __future__ import annotations

from microbench.stats import check_shape
from microbench.report.formats import Doc, Table, render, rich_table


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _f(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain terminal table (rich, no colour), numbers right-aligned."""
    return rich_table(headers, rows)


def ladder_desc(run: dict) -> str:
    ladder = run.get("ladder") or []
    return f"{run['config']['ladder']} ({len(ladder)} sizes, max {ladder[-1]})" if ladder else "none"


def slow_text(slow_rows) -> str:
    """'bs 1: 56 rounds, bs 4: 3 rounds': a --repeat process's rows sampled on a slow host."""
    return ", ".join(f"bs {r['bs']}: {r['slow_rounds']} rounds" for r in slow_rows)


def sizes_note(what: str, sizes, listed: int = 1) -> str:
    """' | <what> at 64', ' | <what> at 2, 4, 16' (up to `listed` sizes) or ' | <what> at 3
    sizes, 32 to 128' for the header; '' for none."""
    if not sizes:
        return ""
    return (f" | {what} at {', '.join(map(str, sizes))}" if len(sizes) <= listed else
            f" | {what} at {len(sizes)} sizes, {sizes[0]} to {sizes[-1]}")


def sweep_header(run: dict) -> str:
    c, env = run["config"], run.get("env", {})
    lad = ladder_desc(run)
    # the PDL mode the Triton kernels launched with, per batch size where the sizes differ
    # (runs before it was recorded: not shown)
    dec = run.get("decoder") or {}
    by_mode = dec.get("pdl_rows") or {}
    # (a mode at a few sizes names them: they need not be a range)
    pdl = ("".join(sizes_note(f"PDL {mode}", sizes, listed=4) for mode, sizes in by_mode.items())
           if len(by_mode) > 1 else f" | PDL {next(iter(by_mode))}" if by_mode
           else f" | PDL {dec['pdl_mode']}" if dec.get("pdl_mode") else "")
    # the batch sizes whose matmuls ran cuBLASLt (engine/blas.py), where any did
    lt = sizes_note("cuBLASLt", dec.get("cublaslt_rows"))
    # and those whose fused attention took the capped split count or half-size K/V tiles, or
    # whose attention ran as separate kernels (engine/splits.py)
    lt += sizes_note("attention splits capped", dec.get("capped_split_rows"))
    lt += sizes_note("attention tiles halved", dec.get("half_tile_rows"))
    lt += sizes_note("attention separate", dec.get("separate_attention_rows"))
    return (f"GPU {env.get('gpu')} | preset {c['preset']} | {c['dtype']} | mode {c['mode']}"
            f"{' (split launch)' if c.get('split_launch') else ''} | "
            f"ladder {lad} | context {c['context']}{pdl}{lt} | "
            f"torch {env.get('torch')} triton {env.get('triton')}")


def sweep_table(run: dict) -> str:
    """The sweep's terminal table, from a run dict (live or loaded)."""
    return render(sweep_doc(run))


def sweep_doc(run: dict) -> Doc:
    """The sweep's document: header, one row per batch size (JSON: the run's rows), footer."""
    # arms beyond eager and graph, in the order the run recorded them (torch-graph's fields
    # are torch_graph_step_us, ...)
    extra = [a for a in (run.get("arms") or {}) if a not in ("eager", "graph")]
    heads = ["bs", "pad", "ran as", "eager us", "graph us", *(f"{a} us" for a in extra),
             "speedup", "95% CI", *(["repeat spread (CI)"] if run.get("repeats") else []), "pred", "eager tok/s", "graph tok/s", "tok/s/seq", "GB/s", "MBU"]
    rows = []
    for r in run.get("rows", []):
        rows.append([
            str(r["bs"]), _f(r.get("padded_bs"), "d"), r.get("ran_as", "-"),
            _f(r.get("eager_step_us")), _f(r.get("graph_step_us")),
            *(_f(r.get(f"{a.replace('-', '_')}_step_us")) for a in extra),
            *speedup_cells(r, bool(run.get("repeats"))), _f(r.get("predicted_speedup"), ".2f"),
            _f(r.get("eager_tok_s"), ".0f"), _f(r.get("graph_tok_s"), ".0f"),
            _f(r.get("graph_tok_s_per_seq") or r.get("eager_tok_s_per_seq"), ".0f"),
            _f(r.get("bw_use") and r["bw_use"] / 1e9, ".0f"), _f(r.get("graph_mbu"), ".0%"),
        ])
    return Doc([Table(heads, rows, title=sweep_header(run), records=run.get("rows", [])),
                sweep_footer(run)])


def speedup_cells(r: dict, repeats: bool = False) -> list[str]:
    """The speedup ("~" after it: the row missed its stopping rule), its interval and, under
    --repeat, the spread of the processes' speedups (max / min - 1) with the hierarchical
    interval over every process's paired ratios."""
    s = _f(r.get("speedup"), ".2f") + ("~" if r.get("stable") is False else "")
    ci = r.get("speedup_ci")
    cells = [s, f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"]
    if repeats:
        hc = r.get("speedup_repeats_ci")
        cells.append(_f(r.get("speedup_repeat_spread"), ".1%")
                     + (f" ({hc[0]:.2f}-{hc[1]:.2f})" if hc else ""))
    return cells


def sweep_footer(run: dict) -> str:
    """The lines under the sweep's table: how it was measured, the device, the GPU time
    of a replay, each arm, the shape check and the model's error."""
    lines = _measure_lines(run) + _replay_lines(run) + _arm_lines(run) + shape_lines(run)
    return "\n".join(lines + closing_lines(run))


def shape_lines(run: dict) -> list[str]:
    """The shape checks' verdicts (one GPU or TP): the bundle an operator toggles, where the run
    has an engine-eager arm, and eager against graph."""
    lines, checks = [], dict(run)
    if "shape_check" not in run and any(r.get("speedup") for r in run.get("rows", [])):
        # TP runs saved before the TP sweep judged its rows: judged here from them
        checks["shape_check"] = check_shape(run["rows"])
    if "shape_check_engine" not in run and any(r.get("engine_eager_speedup") for r in run.get("rows", [])):
        # runs saved before the sweep judged the bundle: judged here from their rows
        checks["shape_check_engine"] = check_shape(run["rows"], prefix="engine_eager_")
    for key, what in (("shape_check_engine", "engine-eager against graph, the bundle published"),
                      ("shape_check", "eager against graph, the graphs alone")):
        sc = checks.get(key)
        if sc and sc.get("held") is not None:
            lines.append(f"published shape (largest at bs 1, fading, never below 1), {what}: "
                         f"{'held' if sc['held'] else 'NOT held: ' + sc['why']}")
    return lines


def closing_lines(run: dict) -> list[str]:
    """A sweep footer's last lines (one GPU or TP): the model's worst error, an interruption,
    the run's wall time."""
    lines = []
    errs = [(abs(r["speedup_error"]), r["bs"]) for r in run.get("rows", [])
            if r.get("speedup_error") is not None]
    if errs:
        err, bs = max(errs)
        # a one-GPU sweep's: model --profile sets its measurements beside the predictions
        where = (" (`microbench model --profile` on this run sets its GPU time, by kernel "
                 "family, beside the run's)" if run.get("kind") == "sweep" else "")
        lines.append(f"model: worst speedup error {err:.1%}, at bs {bs}{where}")
    if run.get("interrupted"):
        lines.append("interrupted: rows above were measured before Ctrl-C")
    if run.get("wall_s"):
        lines.append(f"run took {run['wall_s']:.1f} s")
    return lines


def worst_repeat_line(rows: list) -> list[str]:
    """The row whose speedup moved most across --repeat's processes: each process's eager and
    graph medians and the probe loop time of the CPU it kept (a quicker host, a shorter loop),
    so a spread that follows the host's speed shows as such."""
    rows = [r for r in rows if r.get("speedup_repeat_spread") is not None
            and r.get("eager_step_us_repeats")]
    if not rows:
        return []
    r = max(rows, key=lambda r: r["speedup_repeat_spread"])
    per = lambda key: "/".join(_f(v) for v in r.get(key) or [])
    loops = r.get("host_loop_us_repeats") or []
    return [f"widest at bs {r['bs']}: eager {per('eager_step_us_repeats')} us, graph "
            f"{per('graph_step_us_repeats')} us per process"
            + (f"; its CPU's probe loop {per('host_loop_us_repeats')} us"
               if any(v is not None for v in loops) else "")]


def _measure_lines(run: dict) -> list[str]:
    lines = unstable_lines(run) + repeat_lines(run)
    cap = run.get("capture") or {}
    if cap.get("sizes"):
        lines.append(capture_line(cap))
    k = run.get("kernels_per_step") or {}
    if k:
        nodes = k.get("graph_kernels")
        lines.append(f"kernels per eager step: {k.get('measured')} measured "
                     f"(plan {sum((k.get('planned') or {}).values())}); kernels per graph replay {nodes}")
    launch = run.get("launch") or {}
    if launch:
        hu = launch.get("host_us", {})
        lines.append("host us per launch: " + ", ".join(f"{n} {v['median']:.1f}" for n, v in hu.items())
                     + f" | copy bandwidth {launch['copy']['bytes_per_s'] / 1e12:.2f} TB/s")
    per_kernel = run.get("eager_host_us_per_kernel") or {}
    if per_kernel and launch:
        bare = ", ".join(f"{n} {v['median']:.1f}" for n, v in launch.get("host_us", {}).items())
        lines.append("eager host us per kernel (bound launches): " + ", ".join(
            f"bs {b} {v:.1f}" for b, v in per_kernel.items()) + f" | bare launch: {bare}")
    pin = pin_line(own_rows(run))
    if pin:
        lines.append(pin)
    kl = (launch or {}).get("kernel_lines")
    if kl:
        lines.append("model's kernel lines (GPU us in a graph): " + ", ".join(
            f"{f} {v['fixed_us']:.1f}" + (f" + bytes / {v['bytes_per_s'] / 1e12:.2f} TB/s"
                                           if v.get("bytes_per_s") else "") for f, v in kl.items()))
        mixes = {p["b"]: p["mix"] for v in kl.values() for p in v.get("points", ()) if "mix" in p}
        if mixes:
            lines.append("a layer's ops beside their neighbours over alone (mix factor): "
                         + ", ".join(f"bs {b} {m:.2f}" for b, m in sorted(mixes.items())))
    gap = (run.get("profile") or {}).get("stream_gap_us")   # the model's, from this run's launch
    if gap is not None and "triton" in (launch or {}).get("gpu_us_per_kernel_queued", {}):
        lines.append("eager kernels the GPU meets queued in a stream: "
                     f"+{gap:.2f} us each over a graph node (triton)")
    if run.get("runner_host_us"):
        parts = run.get("runner_host_parts_us") or {}
        lines.append(f"runner host work per graph step (bs {run['config']['bs'][0]}): "
                     f"{run['runner_host_us']['median']:.1f} us"
                     + (f" (input copy {parts['copy']:.1f}, replay call {parts['replay']:.1f})"
                        if parts else ""))
    eb = run.get("eager_breakdown")
    if eb and own_rows(run):
        r0 = own_rows(run)[0]
        lines.append(f"eager step at bs {r0['bs']}: host {r0.get('eager_host_us', 0):.0f} us measured; "
                     "launches by launcher (host costs sampled beside its steps): " + ", ".join(
                         f"{k} {v['kernels']} kernels {v['host_us']:.0f} us" for k, v in eb.items()))
    return lines


def unstable_lines(run: dict) -> list[str]:
    """What "~" after a speedup means, where a row has it."""
    if not any(r.get("stable") is False for r in run.get("rows", [])):
        return []
    return ["~: unstable row (its speedup's 95% interval stayed wider than +-2% until the time "
            "budget ended)"]


def repeat_lines(run: dict) -> list[str]:
    """Under --repeat: the worst spread and each process's shape checks, the widest row, and
    which process each merged row is; nothing for a run of one process."""
    rep = run.get("repeats")
    if not rep:
        return []
    held = lambda key: sum(1 for h in rep.get(key, []) if h)
    how = {"interleaved": " taking the GPU in turns", "sequential": " run one after another"}
    lines = [f"--repeat {rep['k']}: speedups of {rep['k']} fresh processes"
             f"{how.get(rep.get('mode'), '')}, worst spread "
             f"{_f(rep.get('max_spread'), '.1%')} (max / min - 1); shape held in "
             f"{held('shape_held')} of {rep['k']}"
             + (f" (engine-eager against graph: in {held('engine_shape_held')} of {rep['k']})"
                if any(h is not None for h in rep.get("engine_shape_held", [])) else "")]
    for key, what in (("replaced", "replaced"), ("slow_kept", "kept, no tries left")):
        if rep.get(key):
            lines.append(f"{what}, sampled on a slow host after its wait ran out: " + "; ".join(
                f"process {x['process']} ({slow_text(x['slow_rows'])})" for x in rep[key])
                + "; kept processes " + ", ".join(map(str, rep["kept"])))
    # processes are named in the order they started (rows count the kept ones from 1)
    kept = rep.get("kept") or list(range(1, rep["k"] + 1))
    name = lambda p: kept[p - 1]
    # rows a kept process sampled again after a slow host (sweep.measure_until_quick)
    retried = [f"process {name(i + 1)} bs {r['bs']} ({_tries(hp['retried_slow_rounds'])})"
               for r in run.get("rows", [])
               for i, hp in enumerate(r.get("host_pin_repeats") or [])
               if (hp or {}).get("retried_slow_rounds")]
    if retried:
        lines.append("sampled again after a slow host outlasted the wait: " + ", ".join(retried))
    lines += worst_repeat_line(run.get("rows", []))
    picked = [(r["bs"], r["repeat_process"]) for r in run.get("rows", []) if r.get("repeat_process")]
    if picked:
        lines.append("each row is the process with its median speedup: " + ", ".join(
            f"bs {b} from process {name(p)}" for b, p in picked) + f"; the lines below are "
            f"process {name(1)}'s, except the shape checks and the model's error, judged on "
            "these rows")
    return lines


def _capture_parts(cap: dict) -> str:
    """Where the capture's seconds went, from its sizes: the eager warm-up steps before each
    recording (where Triton compiles a kernel variant on its first use, so a cold compile cache
    makes them most of the total) and the recordings themselves; empty when a size lacks
    either figure."""
    sizes = cap.get("sizes") or []
    if not sizes or any("warmup_s" not in s or "capture_s" not in s for s in sizes):
        return ""
    warm, rec = sum(s["warmup_s"] for s in sizes), sum(s["capture_s"] for s in sizes)
    return f" (warm-up steps {warm:.2f} s, compiles on first use included; recording {rec:.2f} s)"


def capture_line(cap: dict) -> str:
    """The footer's capture line from a run's `capture` (GraphRunner's capture report): one
    pass, or each pass of full_and_piecewise with its sizes, seconds and pool growth; the
    seconds split into warm-up steps and recording (_capture_parts)."""
    passes = cap.get("passes") or []
    if len(passes) < 2:
        return (f"capture: {cap['capture_s']:.2f} s for {len(cap['sizes'])} sizes"
                f"{_capture_parts(cap)}, pool {fmt_bytes(cap['pool_bytes'])}"
                + (f", skipped (out of memory): {cap['skipped']}" if cap.get("skipped") else ""))
    return (f"capture: {cap['capture_s']:.2f} s{_capture_parts(cap)}, pool "
            f"{fmt_bytes(cap['pool_bytes'])}, in "
            f"{len(passes)} passes: " + "; ".join(
                f"{p['routine']} {len(p['sizes'])} sizes in {p['capture_s']:.2f} s, pool +"
                f"{fmt_bytes(p['pool_bytes'])}"
                + (f", skipped (out of memory): {p['skipped']}" if p.get("skipped") else "")
                for p in passes))


def own_rows(run: dict) -> list:
    """The rows the run-level figures were measured beside: under --repeat the first process's
    (repeats.first_rows, as its launch costs and profile are), else the table's."""
    return (run.get("repeats") or {}).get("first_rows") or run.get("rows") or []


def _replay_lines(run: dict) -> list[str]:
    lines = []
    gpu_us = {str(r["bs"]): r.get("graph_gpu_us") for r in own_rows(run)}
    for bs, fams in (run.get("graph_gpu_breakdown") or {}).items():
        tot = sum(f["us"] for f in fams.values())
        top = sorted(fams.items(), key=lambda kv: -kv[1]["us"])
        ev = f" (events: {gpu_us[bs]:.0f} us a step)" if gpu_us.get(bs) else ""
        lines.append(f"kernel time in one replay at bs {bs}{ev}: {tot:.0f} us = " + ", ".join(
            f"{k} {v['us']:.0f} ({v['n']})" for k, v in top)
            + ("; kernels launched with PDL overlap (a kernel's time includes its wait for the "
               "one before), so this sums past the step" if launched_pdl(run, bs) else ""))
    lines += family_bw_lines(run)
    if run.get("eager_gpu_busy_us") is not None and own_rows(run):
        r0 = own_rows(run)[0]
        lines.append(f"eager step at bs {r0['bs']}: GPU busy {run['eager_gpu_busy_us']:.0f} us "
                     f"of a {r0['eager_step_us']:.0f} us step")
    return lines


def _arm_lines(run: dict) -> list[str]:
    lines = []
    for arm, info in (run.get("arms") or {}).items():
        if "graphed" not in info and "setup_s" not in info:
            continue
        g = info.get("graphed")
        bits = [f"graphed: {'yes' if g else 'NO' if g is False else '-'}"]
        if info.get("setup_s") is not None:
            bits.append(f"set-up {info['setup_s']:.1f} s ({'compile and record' if 'compile' in arm else 'capture'})")
        if "inductor_cudagraph_skips" in info:
            bits.append(f"Inductor skipped {info['inductor_cudagraph_skips']} graphs")
        diffs = [r[f"{arm.replace('-', '_')}_max_abs_diff"] for r in own_rows(run)
                 if r.get(f"{arm.replace('-', '_')}_max_abs_diff") is not None]
        if diffs:
            bits.append(f"logits within {max(diffs):.3g} of eager's")
        lines.append(f"arm {arm}: " + ", ".join(bits))
    return lines


def family_bw_lines(run: dict) -> list[str]:
    """Per profiled batch, each plan family's bytes, GPU time in one replay and share of the
    copy bandwidth (run.json's graph_family_bw, bench.bandwidth), largest time first; a run
    whose decoder launched with PDL timed these kernels in a replay captured without it."""
    copy = ((run.get("launch") or {}).get("copy") or {}).get("bytes_per_s")
    lines = []
    for bs, fams in (run.get("graph_family_bw") or {}).items():
        parts = []
        for f, v in sorted(fams.items(), key=lambda kv: -kv[1]["us"]):
            if v["bytes"] is None:
                parts.append(f"{f} {v['us']:.0f} us (not in the plan)")
            elif v["copy_share"] is None:
                parts.append(f"{f} {v['bytes'] / 1e6:.1f} MB in {v['us']:.0f} us")
            else:
                parts.append(f"{f} {v['bytes'] / 1e6:.1f} MB in {v['us']:.0f} us = "
                             f"{v['copy_share']:.0%} of copy ({v['us_over']:+.0f} us over its "
                             f"{v['us_at_copy']:.0f} at copy)")
        head = f"by plan family at bs {bs}" + (f" (copy {copy / 1e12:.2f} TB/s)" if copy else "")
        lines.append(head + ": " + "; ".join(parts)
                     + ("; kernels timed in a replay without PDL, each alone"
                        if launched_pdl(run, bs) else ""))
    return lines


def launched_pdl(run: dict, bs) -> bool:
    """Whether the graph replayed for batch `bs` launched its kernels with PDL: the mode at the
    size it was padded to (decoder.pdl_rows), or the run's one flag before modes per size."""
    dec = run.get("decoder") or {}
    if "pdl_rows" not in dec:
        return bool(dec.get("pdl"))
    row = next((r for r in own_rows(run) if str(r["bs"]) == str(bs)), {})
    size = row.get("padded_bs") or int(bs)
    return any(size in sizes for mode, sizes in dec["pdl_rows"].items() if mode != "off")


def launch_table(launch: dict) -> str:
    return render(launch_doc(launch))


def launch_doc(launch: dict) -> Doc:
    """A launch run's document: launch costs per launcher, then replay cost per node count."""
    queued = launch.get("gpu_us_per_kernel_queued", {})   # runs before it lack it
    rows = [[n, _f(v["median"], ".2f"), _f(v["p20"], ".2f"), _f(v["p80"], ".2f"),
             _f(launch["gpu_us_per_kernel"][n]["median"], ".2f"),
             _f(queued[n]["median"], ".2f") if n in queued else "-"]
            for n, v in launch["host_us"].items()]
    rrows = [[n, _f(v["host_us"]["median"], ".2f"), _f(v["gpu_us"]["median"], ".2f")]
             for n, v in launch["replay"].items()]
    fit = launch["replay_fit"]
    return Doc([
        Table(["launcher", "host us", "p20", "p80", "GPU us/kernel", "queued"], rows, left=1,
              name="launchers", title="host time to enqueue one kernel, and GPU time per kernel "
                                      "back to back: in a graph, and queued in a stream"),
        Table(["nodes", "host us", "GPU us"], rrows, name="replay",
              title="graph replay of n tiny-kernel nodes"),
        f"fit: host {fit['host_fixed_us']:.2f} us + {fit['host_per_node_us']:.4f} us/node; "
        f"GPU {fit['gpu_fixed_us']:.2f} us + {fit['gpu_per_node_us']:.3f} us/node",
        "\n".join([f"sync round trip {launch['sync_us']['median']:.1f} us | copy bandwidth "
                   f"{launch['copy']['bytes_per_s'] / 1e12:.2f} TB/s (read+write) | bf16 matmul "
                   f"{launch['matmul']['flops_per_s'] / 1e12:.0f} TFLOP/s",
                   *launch.get("notes", [])])])


def kernels_table(run: dict) -> str:
    """The table of a `microbench kernels` run: each kernel's bandwidth against copy's."""
    return render(kernels_doc(run))


def kernels_doc(run: dict) -> Doc:
    rows = [[r["kernel"], str(r["B"]), str(r["context"] or "-"), f"{r['bytes'] / 1e6:.3f}",
             f"{r['time_us']:.2f}", f"{r['bytes_per_s'] / 1e9:.0f}", f"{r['frac_of_copy']:.0%}"]
            for r in run["rows"]]
    head = (f"kernels at {run['config']['preset']} decode shapes on {run['env']['gpu']}; copy "
            f"bandwidth {run['copy']['bytes_per_s'] / 1e12:.2f} TB/s (read + write)")
    return Doc([Table(["kernel", "B", "context", "MB", "us", "GB/s", "of copy"], rows,
                      title=head, records=run["rows"], left=1)])


def _tries(dropped: list) -> str:
    """'1 try dropped', '2 tries dropped': the tries a row took back
    (host_pin.retried_slow_rounds)."""
    return f"{len(dropped)} {'try' if len(dropped) == 1 else 'tries'} dropped"


def pin_line(rows) -> str | None:
    """The host CPU pin over a run's rows (bench.hostcpu): moves, checks and the probe loop's
    times, the host's quick time and waits, the rounds counted, and the rows sampled again
    after a slow host (sweep.measure_until_quick); None when no row was pinned."""
    pins = [r["host_pin"] for r in rows if r.get("host_pin") and r["host_pin"].get("checks")]
    if not pins:
        return None
    lo = min(p["loop_us_range"][0] for p in pins)
    hi = max(p["loop_us_range"][1] for p in pins)
    refs = [p["reference_us"] for p in pins if p.get("reference_us")]
    wait = ""
    if refs:   # runs before the host reference have none
        waited = sum(p.get("waited_s") or 0 for p in pins)
        slow = sum(p.get("slow_rounds") or 0 for p in pins)
        wait = (f"; host's quick loop {min(refs):.0f} us, waited {waited:.1f} s for a slow host"
                + (f", {slow} rounds on a slow host" if slow else ""))
    quiet = [p for p in pins if p.get("quiet_rounds") is not None]
    if quiet:   # runs before the rule have none
        wait += (f"; {sum(p['quiet_rounds'] for p in quiet)} of {sum(p['rounds'] for p in quiet)}"
                 f" rounds counted, the loop within {quiet[0]['quiet_tol']:.2f}x of quick "
                 f"around them")
        fell = sum(1 for p in quiet if p.get("quiet_fallback"))
        if fell:
            wait += f", {fell} row{'s' * (fell != 1)} short of them kept every round"
    retried = [f"bs {r['bs']} ({_tries(r['host_pin']['retried_slow_rounds'])})" for r in rows
               if (r.get("host_pin") or {}).get("retried_slow_rounds")]
    if retried:   # sweep.measure_until_quick
        wait += "; sampled again after a slow host outlasted the wait: " + ", ".join(retried)
    return (f"host CPU: each row's rotation kept on a quick CPU ({sum(p['moves'] for p in pins)} "
            f"moves in {sum(p['checks'] for p in pins)} checks; probe loop per row "
            + ", ".join(f"{p['loop_us']:.0f}" for p in pins) + f" us, range {lo:.0f}-{hi:.0f}"
            + wait + ")")
