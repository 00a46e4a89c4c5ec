"""Where a piecewise step's time goes: opt-125m (or --preset) captured full and piecewise at a few
batch sizes; each step timed (wall, synchronised), then one piecewise step at the smallest size
taken apart: each piece's graph replay and each attention call, synchronised one by one (host
time to enqueue, and wall time to finish), and a profiler table of five piecewise steps.
    usage: python3 scripts/piecewise_probe.py [--preset opt-125m] [--bs 1,16,64]
"""
import argparse
import time


def wall_us(fn, n=200):
    import torch
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e6)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="opt-125m")
    ap.add_argument("--bs", default="1,16,64")
    args = ap.parse_args()
    import torch
    from microbench.bench.inputs import packed, step_inputs
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.graphs import replay_pieces
    from microbench.engine.runner import GraphRunner
    from microbench.engine.shapes import PRESETS
    bss = [int(b) for b in args.bs.split(",")]
    dec = ToyDecoder(PRESETS[args.preset], max_batch=max(bss), max_seq=576, device="cuda")
    dec.fill_cache(512)
    runners = {m: GraphRunner(dec, bss, mode=m) for m in ("full", "piecewise")}
    for r in runners.values():
        r.capture()
    gen = torch.Generator(device="cuda").manual_seed(1)
    for bs in bss:
        x = packed(*step_inputs(dec.shape.vocab, bs, 512, "cuda", gen))
        bound = dec.bind(bs)
        got = {m: wall_us(lambda r=r: r.step_packed(x)) for m, r in runners.items()}
        got["eager"] = wall_us(lambda: bound.step_packed(x))
        print(f"bs {bs}: " + ", ".join(f"{m} {v:.1f} us" for m, v in got.items()))
    pw = runners["piecewise"]
    bs = bss[0]
    e = pw.graphs["piecewise"][bs]
    print(f"piecewise entry at bs {bs}: {len(e.graphs)} graphs, {len(e.attention)} attention calls, "
          f"launches per call {[len(a) if a else None for a in e.attention][:3]}")
    parts = [("piece 0", e.graphs[0].replay)]
    for layer in range(len(e.pieces)):
        parts.append((f"attention {layer}", lambda a=e.attention[layer]: [f() for f in a]))
        parts.append((f"piece {layer + 1}", e.graphs[layer + 1].replay))
    for name, fn in parts[:7]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"  {name}: host {(t1 - t0) * 1e6:.1f} us, done after {(t2 - t0) * 1e6:.1f} us")
    print(f"  each part alone, median wall: " + ", ".join(
        f"{n} {wall_us(f, 50):.1f}" for n, f in parts[:5]))
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            replay_pieces(e, dec, pw._in[2, :bs], pw._attn_out[:bs])
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
