"""Where a graphed step's time goes, kernel by kernel, from a sweep's profiler trace.

usage: python scripts/trace_marginal.py TRACE.json[.gz] [--top 12] [--layer N [--skip 1 --tail 1]]
           [--preset P --bs B [--context 512]]

`microbench sweep --bs N --trace DIR` writes one eager and one graphed step under the PyTorch
profiler. With programmatic dependent launch the graph's kernels overlap (each starts before
the one before it ends, and waits), so their durations sum past the step. This takes the
graph replay's kernels (those correlated with its cudaGraphLaunch) in the order they end, and
charges each the time from the previous kernel's end to its own: its marginal cost on the
step's critical path, which sums to the span from the first kernel's start to the last one's
end. It prints that per kernel family (the sweep's families: bench.profile.KERNEL_FAMILIES),
the kernels with the largest marginal cost, and per family the median marginal cost a call.
With --layer N (a layer's kernel count in the step's plan), it also prints, for each position
inside a layer, the median over the layers of the marginal cost, of how long the kernel had
started before the previous one ended (its lead: under PDL its launch and its work before the
wait overlap the kernel before; negative, a gap), and of its duration: the kernels after the
first --skip and before the last --tail (the embedding and the LM head) taken N at a time. A
kernel that leads by much and still costs its time alone after the previous end did little of
its work early. With --preset,
--bs and --context (the traced sweep's), each kernel takes its op's name from the step plan
(engine.plan.step_kernels, whose order is the launch order), and a table per op adds the bytes
the plan says it moves and their rate on the critical path: bytes over marginal time."""
import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def family(name: str) -> str:
    from microbench.bench.profile import KERNEL_FAMILIES
    return next((f for key, f in KERNEL_FAMILIES if key in name.lower()), "other")


def graph_kernels(events: list) -> list:
    """The kernels of the trace's graph replay: those whose correlation id is its
    cudaGraphLaunch's (the latest one, with a note on stderr, if there are several), sorted by
    start. A trace without one, or whose launch has no kernels, stops with a one-line error."""
    launches = [e for e in events if e.get("name") == "cudaGraphLaunch" and e.get("ph") == "X"
                and e.get("args", {}).get("correlation") is not None]
    if not launches:
        raise SystemExit("no cudaGraphLaunch in the trace: was it written with a graph arm?")
    launch = max(launches, key=lambda e: e["ts"])
    if len(launches) > 1:
        print(f"note: {len(launches)} graph launches in the trace; taking the latest",
              file=sys.stderr)
    corr = launch["args"]["correlation"]
    ks = [e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"
          and e.get("args", {}).get("correlation") == corr]
    if not ks:
        raise SystemExit(f"no kernel correlated with cudaGraphLaunch {corr}")
    return sorted(ks, key=lambda e: e["ts"])


def by_end(kernels: list) -> list:
    """The kernels in order of their ends, the order every per-kernel figure here is taken in."""
    return sorted(kernels, key=lambda e: e["ts"] + e["dur"])


def marginal(kernels: list) -> list:
    """(name, marginal us, duration us) per kernel, in order of their ends: the first to end is
    charged from the earliest start, each later one from the previous end to its own, so the
    charges sum to the span from the first start to the last end."""
    out, last_end = [], min(e["ts"] for e in kernels)
    for e in by_end(kernels):
        end = e["ts"] + e["dur"]
        out.append((e.get("op", e["name"]), end - last_end, e["dur"]))
        last_end = end
    return out


def leads(kernels: list) -> list:
    """Per kernel, in order of their ends as marginal() gives them: how long before the previous
    kernel's end it started, in us (0 for the first; negative where it started after a gap)."""
    out, last_end = [], None
    for e in by_end(kernels):
        out.append(0.0 if last_end is None else last_end - e["ts"])
        last_end = e["ts"] + e["dur"]
    return out


def name_by_plan(kernels: list, preset: str, bs: int, context: int) -> dict:
    """Give each kernel (sorted by start) its op's name from the step plan ("op" key); returns
    {op name: bytes the plan says one call moves}. A plan of another length stops in one line."""
    from microbench.engine.plan import Fusion, step_kernels
    from microbench.engine.shapes import PRESETS
    if preset not in PRESETS:
        raise SystemExit(f"--preset: {preset!r} is not one of {', '.join(PRESETS)}")
    # the fused plan, or, at a size the splits table runs as separate attention kernels, the
    # MATMULS plan with or without decode_attention's reduce: the one as long as the replay
    plans = [step_kernels(PRESETS[preset], bs, context)]
    plans += [step_kernels(PRESETS[preset], bs, context, attn_launches=n, fusion=Fusion.MATMULS)
              for n in (2, 1)]
    plan = next((p for p in plans if len(p) == len(kernels)), None)
    if plan is None:
        raise SystemExit(f"--preset {preset} --bs {bs}: the plans have "
                         f"{', '.join(str(len(p)) for p in plans)} kernels, the graph replay "
                         f"{len(kernels)}: not this sweep's step")
    for e, k in zip(kernels, plan):
        e["op"] = k.name
    return {k.name: k.bytes for k in plan}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--layer", type=int, default=0, help="kernels per layer (0: no per-layer table)")
    ap.add_argument("--skip", type=int, default=1, help="kernels before the first layer")
    ap.add_argument("--tail", type=int, default=1, help="kernels after the last layer")
    ap.add_argument("--preset", default=None, help="the traced sweep's preset: ops named by its plan")
    ap.add_argument("--bs", type=int, default=1, help="the traced batch size (with --preset)")
    ap.add_argument("--context", type=int, default=512, help="the sweep's context (with --preset)")
    a = ap.parse_args(argv)
    opener = gzip.open if a.trace.endswith(".gz") else open
    try:
        with opener(a.trace, "rt") as f:
            events = json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{a.trace}: not a readable profiler trace ({e.__class__.__name__})")
    ks = graph_kernels(events)
    ends = by_end(ks)
    if [id(e) for e in ends] != [id(e) for e in ks]:
        print("note: some kernels end before one launched ahead of them; the per-position "
              "table counts positions in order of their ends", file=sys.stderr)
    op_bytes = name_by_plan(ks, a.preset, a.bs, a.context) if a.preset else {}
    rows = marginal(ks)
    span = max(e["ts"] + e["dur"] for e in ks) - min(e["ts"] for e in ks)
    print(f"{a.trace}: graph replay of {len(ks)} kernels, {span:.1f} us from the first start to "
          f"the last end; durations sum to {sum(d for _, _, d in rows):.1f} us")
    fams: dict = {}
    for e, (_, m, d) in zip(ends, rows):
        fams.setdefault(family(e["name"]), []).append((m, d))
    print("family            calls  marginal us  share  median a call  duration us")
    for fam, xs in sorted(fams.items(), key=lambda kv: -sum(m for m, _ in kv[1])):
        tot = sum(m for m, _ in xs)
        print(f"{fam:<17} {len(xs):>5} {tot:>12.1f} {tot / span:>6.1%} "
              f"{statistics.median(m for m, _ in xs):>14.2f} {sum(d for _, d in xs):>12.1f}")
    print(f"the {a.top} kernels with the largest marginal cost:")
    for name, m, d in sorted(rows, key=lambda r: -r[1])[:a.top]:
        print(f"  {m:8.2f} us (duration {d:8.2f})  {name[:90]}")
    if a.layer:
        body = rows[a.skip:len(rows) - a.tail]
        if not body or len(body) % a.layer:
            raise SystemExit(f"--layer {a.layer}: {len(body)} kernels between --skip {a.skip} and "
                             f"--tail {a.tail} are not whole layers of {a.layer}")
        lead = leads(ks)[a.skip:len(rows) - a.tail]
        print(f"per position in a layer ({len(body) // a.layer} layers): median marginal us, "
              "lead us (started before the previous end), duration us, name")
        for j in range(a.layer):
            ms = [m for _, m, _ in body[j::a.layer]]
            ds = [d for _, _, d in body[j::a.layer]]
            print(f"  {j}: {statistics.median(ms):7.2f} {statistics.median(lead[j::a.layer]):7.2f} "
                  f"{statistics.median(ds):7.2f}  {body[j][0][:60]}")
    if op_bytes:
        ops: dict = {}
        for name, m, _ in rows:
            ops.setdefault(name, []).append(m)
        print("op                     calls  marginal us  median a call       MB  GB/s on the path")
        for name, ms in sorted(ops.items(), key=lambda kv: -sum(kv[1])):
            mb, tot = op_bytes[name] * len(ms) / 1e6, sum(ms)
            rate = f"{mb / tot * 1e3:16.0f}" if tot > 0 else f"{'-':>16}"
            print(f"{name:<22} {len(ms):>5} {tot:>12.1f} {statistics.median(ms):>14.2f} "
                  f"{mb:>8.1f} {rate}")


if __name__ == "__main__":
    main()
