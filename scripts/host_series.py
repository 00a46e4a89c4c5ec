"""On what time scale does a host-bound eager step drift? One process pins itself to its
quickest CPU, builds a decoder (opt-125m by default) and its graph at one batch size, and for
--seconds takes rounds of: the pure-Python probe loop (bench.hostcpu), an eager sample and a
graph sample (each --steps steps, wall time to a synchronise; eager and graph alternate which
goes first). Then, for windows of several lengths, it splits the rounds into consecutive windows,
takes each window's median eager/graph ratio (the sweep's speedup statistic) and prints how far
those medians spread: max over min, and the median absolute deviation from their median.

If short windows spread far more than long ones, the drift is faster than a sweep row's time
budget and a row sampled over longer or interleaved stretches agrees better with another
process's; if the spread does not shrink with the window, the drift is slower than any row (or
belongs to the process). Run it in several processes to compare their whole-run medians.

--replay reads rounds written with --json (gzipped or not) and prints, per file, the same
windows, then the rule the sweep applies (bench.hostcpu's QUIET): each round counted only when
the probes before and after it are within a tolerance of the host's quick probe (the files'
pooled lower decile), at several tolerances, with how far the processes' one-window medians
would spread: every combination of one window from each file.
    usage: python3 scripts/host_series.py [--preset opt-125m] [--bs 1] [--seconds 20] [--json F]
           python3 scripts/host_series.py --replay F1.json.gz F2.json.gz F3.json.gz
"""
import argparse
import gzip
import itertools
import json
import os
import statistics
import time

WINDOWS = (0.15, 0.5, 1.0, 2.0, 5.0)


def windows(rounds, w, keep=lambda i: True, least=3):
    """Median eager/graph ratio and probe of each `w`-second window of the kept rounds."""
    wins: dict = {}
    for i, (t, probe, e, g) in enumerate(rounds):
        if keep(i):
            wins.setdefault(int(t // w), []).append((probe, e / g))
    return [(statistics.median(v[0] for v in win), statistics.median(v[1] for v in win))
            for win in wins.values() if len(win) >= least]


def print_windows(rounds):
    for w in WINDOWS:
        got = windows(rounds, w)
        if len(got) < 2:
            continue
        ps, ms = [p for p, _ in got], [m for _, m in got]
        c = statistics.median(ms)
        mad = statistics.median([abs(m - c) for m in ms]) / c
        print(f"  windows of {w:4.2f} s ({len(ms):3d}): ratio medians {min(ms):.3f}-{max(ms):.3f} "
              f"(max/min {max(ms) / min(ms):.3f}, MAD {100 * mad:.1f}%), probe medians "
              f"{min(ps):.1f}-{max(ps):.1f} us")


def replay(paths):
    """--replay: the windows of each file, then the quiet rule at several tolerances."""
    runs = {}
    for p in paths:
        with (gzip.open(p, "rt") if p.endswith(".gz") else open(p)) as f:
            runs[os.path.basename(p)] = json.load(f)["rounds"]
    for name, rounds in runs.items():
        r = [x[2] / x[3] for x in rounds]
        print(f"{name}: {len(rounds)} rounds, ratio {statistics.median(r):.3f}, probe "
              f"{statistics.median(x[1] for x in rounds):.1f} us")
        print_windows(rounds)
    probes = sorted(x[1] for rounds in runs.values() for x in rounds)
    ref = probes[len(probes) // 10]
    print(f"quick probe (pooled lower decile): {ref:.1f} us; the eager step by the probe "
          f"before its round, over quick (eager median us, rounds):")
    bands = ((0, 1.04), (1.04, 1.07), (1.07, 1.10), (1.10, float("inf")))
    for name, rounds in runs.items():
        cells = []
        for lo, hi in bands:
            es = [x[2] for x in rounds if lo * ref < x[1] <= hi * ref]
            cells.append(f"{lo:.2f}-{hi:.2f}x: " + (f"{statistics.median(es):.1f} ({len(es)})"
                                                    if es else "-"))
        print(f"  {name}: " + ", ".join(cells))
    print("a round counted when the probes before and after it are within the tolerance")
    for tol in (None, 1.10, 1.07, 1.05, 1.04, 1.03):
        print(f"  tolerance {'none' if tol is None else f'{tol:.2f}'}:")
        for w in (0.5, 1.0, 2.0):
            per, line = [], []
            for name, rounds in runs.items():
                ok = [tol is None or x[1] <= tol * ref for x in rounds] + [True]
                got = windows(rounds, w, lambda i: ok[i] and ok[i + 1], least=10)
                per.append([m for _, m in got])
                line.append(f"{len(got)}")
            spreads = sorted(max(c) / min(c) - 1 for c in itertools.product(*per)) if all(per) else []
            if not spreads:
                print(f"    {w:3.1f} s windows: too few counted rounds")
                continue
            kept = [sum(tol is None or (x[1] <= tol * ref) for x in rounds) for rounds in runs.values()]
            print(f"    {w:3.1f} s windows ({'/'.join(line)}; rounds under it "
                  f"{'/'.join(map(str, kept))}): spread of one window per file, median "
                  f"{100 * spreads[len(spreads) // 2]:.1f}%, p80 {100 * spreads[int(0.8 * len(spreads))]:.1f}%, "
                  f"within 5% in {100 * sum(s <= 0.05 for s in spreads) / len(spreads):.0f}%")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="opt-125m")
    ap.add_argument("--bs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default=None, help="write the rounds here")
    ap.add_argument("--replay", nargs="+", default=None, help="read rounds from --json files")
    args = ap.parse_args()
    if args.replay:
        return replay(args.replay)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("host_series: needs a CUDA GPU")
    from microbench.bench.hostcpu import loop_us
    from microbench.bench.inputs import packed, step_inputs
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.runner import GraphRunner
    from microbench.engine.shapes import PRESETS

    cpus = sorted(os.sched_getaffinity(0))
    probes = {}
    for c in cpus:
        os.sched_setaffinity(0, {c})
        loop_us(20000, 1)
        probes[c] = loop_us()
    cpu = min(probes, key=probes.get)
    os.sched_setaffinity(0, {cpu})
    dec = ToyDecoder(PRESETS[args.preset], max_batch=args.bs, max_seq=576, device="cuda")
    dec.fill_cache(512)
    runner = GraphRunner(dec, [args.bs], mode="full")
    runner.capture()
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = packed(*step_inputs(dec.shape.vocab, args.bs, 512, "cuda", gen))
    bound = dec.bind(args.bs)
    eager = lambda: bound.step_packed(x)
    graph = lambda: runner.step_packed(x)

    def sample(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps * 1e6

    for _ in range(20):
        sample(eager), sample(graph)
    rounds = []
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < args.seconds:
        t = time.perf_counter() - t_start
        probe = loop_us()
        if len(rounds) % 2 == 0:
            e, g = sample(eager), sample(graph)
        else:
            g, e = sample(graph), sample(eager)
        rounds.append((t, probe, e, g))
    print(f"pid {os.getpid()} cpu {cpu} (probes {min(probes.values()):.1f}-"
          f"{max(probes.values()):.1f} us), {args.preset} bs {args.bs}: {len(rounds)} rounds in "
          f"{args.seconds:.0f} s")
    med = lambda xs: statistics.median(xs)
    print(f"  whole run: eager {med([r[2] for r in rounds]):.1f} us, graph "
          f"{med([r[3] for r in rounds]):.1f} us, ratio {med([r[2] / r[3] for r in rounds]):.3f}, "
          f"probe {med([r[1] for r in rounds]):.1f} us")
    print_windows(rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu, probes=probes, rounds=rounds), f)


if __name__ == "__main__":
    main()
