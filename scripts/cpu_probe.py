"""Does the host's speed depend on which CPU the process runs on? Pins this thread to each CPU
it may use in turn, in a shuffled order each round, and times there a fixed pure-Python loop and
one launch of each launcher microbench measures (a tiny PyTorch op, cuBLAS, Triton's JIT
launcher). Prints one line per CPU: the median over rounds and the range.

If the per-CPU figures differ between CPUs and agree between two runs of this script (two
processes), pinning the process to one CPU removes the drift between processes; if one CPU
reads differently in two processes, the drift belongs to the process, not the CPU.
    usage: python3 scripts/cpu_probe.py [--rounds 5] [--launches 400]
"""
import argparse
import os
import random
import statistics
import time


def launch_us(fn, n, sync):
    """Mean host time of one call of `fn` over n back-to-back calls, in us (queue drained first)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = time.perf_counter() - t0
    sync()
    return t / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--launches", type=int, default=400)
    args = ap.parse_args()
    import torch
    from microbench.bench.hostcpu import loop_us
    from microbench.bench.launch import launchers
    if not torch.cuda.is_available():
        raise SystemExit("cpu_probe: needs a CUDA GPU (the launch timings launch kernels)")
    cpus = sorted(os.sched_getaffinity(0))
    print(f"pid {os.getpid()}, cpus allowed {len(cpus)} of {os.cpu_count()}: {cpus}")
    fns = launchers(torch.device("cuda"))
    fns = {k: v for k, v in fns.items() if k in ("torch", "cublas", "triton")}
    for fn in fns.values():  # compile and warm every launcher once
        for _ in range(50):
            fn()
    torch.cuda.synchronize()
    cols = ["python"] + list(fns)
    got = {c: {k: [] for k in cols} for c in cpus}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = cpus[:]
        rng.shuffle(order)
        for c in order:
            os.sched_setaffinity(0, {c})
            loop_us(20000, 1)  # settle on the new CPU
            got[c]["python"].append(loop_us(20000, 5))
            for k, fn in fns.items():
                launch_us(fn, 50, torch.cuda.synchronize)
                got[c][k].append(launch_us(fn, args.launches, torch.cuda.synchronize))
    os.sched_setaffinity(0, set(cpus))
    print("cpu  " + "  ".join(f"{k + ' us':>22}" for k in cols))
    for c in cpus:
        cells = []
        for k in cols:
            v = got[c][k]
            cells.append(f"{statistics.median(v):8.2f} ({min(v):6.2f}-{max(v):6.2f})")
        print(f"{c:3d}  " + "  ".join(f"{s:>22}" for s in cells))
    for k in cols:
        meds = [statistics.median(got[c][k]) for c in cpus]
        print(f"{k}: fastest cpu {cpus[meds.index(min(meds))]} {min(meds):.2f} us, "
              f"slowest cpu {cpus[meds.index(max(meds))]} {max(meds):.2f} us, ratio {max(meds) / min(meds):.2f}")


if __name__ == "__main__":
    main()
