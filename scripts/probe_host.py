"""Probe: what a synchronised bs-1 graph step costs beyond its GPU time, without a profiler
(which slows the host calls it records). Per plan: the replay's GPU time back to back; the
synchronised step (input copy, replay, synchronise) as the sweep times it; the same without the
copy; the host time of the replay call alone and of the copy alone; and the floor of a
synchronised step (one tiny kernel and a synchronise). Split launch is tried with 1, 2 and 4
head layers. Prints one line per plan."""
import os
import sys

import torch

import microbench.kernels.gemv as G
import microbench.engine.runner as GR
from microbench.bench.launch import copy_bandwidth
from microbench.bench.timing import gpu_time_us, host_time_us, step_time_us
from probe_common import bs1_decoder

dev = torch.device("cuda")
copy = copy_bandwidth(dev, budget_s=0.3)["bytes_per_s"]
BUDGET = float(os.environ.get("PROBE_BUDGET", "1.0"))
print(f"copy bandwidth {copy / 1e12:.3f} TB/s", flush=True)
tiny = torch.zeros(1, device=dev)
_, floor = step_time_us(lambda: tiny.add_(1), inner=20, sync_each=True, budget_s=BUDGET)
print(f"synchronised step floor (one tiny kernel + synchronize): {floor.median:.1f} us", flush=True)
if os.environ.get("PROBE_SYNC"):
    # the same floor waited on in other ways (per call, wall time over 2000 calls)
    import time
    ev = torch.cuda.Event()
    stream = torch.cuda.current_stream()

    def spin():
        ev.record()
        while not ev.query():
            pass

    def ev_sync():
        ev.record()
        ev.synchronize()

    for name, wait in (("torch.cuda.synchronize", torch.cuda.synchronize),
                       ("stream.synchronize", stream.synchronize), ("event.synchronize", ev_sync),
                       ("event.query spin", spin), ("no wait (queue only)", lambda: None)):
        xs = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(400):
                tiny.add_(1)
                wait()
            torch.cuda.synchronize()
            xs.append((time.perf_counter() - t0) * 1e6 / 400)
        print(f"  tiny kernel + {name:24s}: {sorted(xs)[2]:.1f} us per call", flush=True)
    sys.exit(0)
_head = GR.head_layers

if os.environ.get("PROBE_COPY"):
    # the input copy before a replay, made in different ways: a DtoD cudaMemcpyAsync (copy_ into
    # a contiguous view: the runner's when its max batch is the step's), an elementwise kernel
    # (copy_ into a strided view: the runner's under a larger max batch; or mul by 1 into the
    # contiguous one), a one-program Triton kernel; or none. GPU time back to back, and the
    # synchronised step waited on with torch.cuda.synchronize and with stream.synchronize.
    import time
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(src, dst, n, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        tl.store(dst + o, tl.load(src + o, mask=o < n), mask=o < n)

    stream = torch.cuda.current_stream()

    def synced(fn, wait, n=400, reps=7):
        xs = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n // 20):
                fn()
                wait()
            xs.append((time.perf_counter() - t0) * 1e6 / (n // 20))
        return sorted(xs)[len(xs) // 2]

    for p in ("llama-1b", "opt-125m"):
        dec, x, nb = bs1_decoder(p, dev)
        runner = GR.GraphRunner(dec, [1], mode="full", progress=False)
        runner.capture()
        g = runner.entries[1].graphs[0]
        inp = runner._rows(1)[0]
        wide = torch.zeros(3, 128, dtype=torch.long, device=dev)[:, :1]
        ways = {"none": lambda: None,
                "copy_ (memcpy)": lambda: inp.copy_(x),
                "copy_ strided (kernel)": lambda: wide.copy_(x),
                "mul by 1 (kernel)": lambda: torch.mul(x, 1, out=inp),
                "triton copy": lambda: _copy[(1,)](x, inp, 3, BLOCK=4)}
        for rnd in range(2):
            for name, cp in ways.items():
                def step(cp=cp):
                    cp()
                    g.replay()
                gpu = gpu_time_us(step, inner=10, budget_s=BUDGET).median
                t_dev = synced(step, torch.cuda.synchronize)
                t_str = synced(step, stream.synchronize)
                h = host_time_us(cp, budget_s=BUDGET / 4).median
                print(f"{p} copy {name:24s} (round {rnd}): GPU {gpu:7.1f} us; synced step "
                      f"{t_dev:7.1f} us ({nb / (t_dev * 1e-6) / copy:.1%}) with torch.cuda.synchronize, "
                      f"{t_str:7.1f} us ({nb / (t_str * 1e-6) / copy:.1%}) with stream.synchronize; "
                      f"host of the copy {h:4.1f} us", flush=True)
        runner.close()
        del dec, runner
        torch.cuda.empty_cache()
    sys.exit(0)
OV = {"down BN 2 BK 2048 ahead": lambda s: {(s.hidden, s.ffn): dict(BLOCK_N=2, BLOCK_K=2048, STAGES=3,
                                                                    num_warps=4, AHEAD=1)}}

if os.environ.get("PROBE_LADDER"):
    # the sweep's runner (max batch 128, the vllm ladder's 19 sizes) against one size: does
    # the bs-1 step's host work depend on the runner around it?
    from microbench.bench.sweep import SweepConfig
    ladder = SweepConfig().ladder_sizes()
    for p in ("llama-1b",):
        for label, mb, sizes in (("ladder, max batch 128", max(ladder), ladder),
                                 ("bs 1 only, max batch 128", max(ladder), [1]),
                                 ("bs 1 only, max batch 1", 1, [1]),
                                 ("ladder, max batch 128 (again)", max(ladder), ladder)):
            dec, x, _ = bs1_decoder(p, dev, max_batch=mb)
            runner = GR.GraphRunner(dec, sizes, mode="full", progress=False)
            runner.capture()
            g = runner.entries[1].graphs[0]
            inp = runner._rows(1)[0]
            gpu = gpu_time_us(g.replay, inner=10, budget_s=BUDGET).median
            _, step = step_time_us(lambda: runner.step_packed(x), inner=20, sync_each=True, budget_s=BUDGET)
            h_step = host_time_us(lambda: runner.step_packed(x), budget_s=BUDGET / 2).median
            h_copy = host_time_us(lambda: inp.copy_(x), budget_s=BUDGET / 2).median
            h_replay = host_time_us(g.replay, budget_s=BUDGET / 2).median

            def copy_replay():
                inp.copy_(x)
                g.replay()
            h_both = host_time_us(copy_replay, budget_s=BUDGET / 2).median
            print(f"{p} {label:32s}: GPU {gpu:7.1f} us, synced step {step.median:7.1f}; host: step_packed "
                  f"{h_step:5.1f}, copy {h_copy:4.1f}, replay {h_replay:4.1f}, copy then replay {h_both:5.1f} us",
                  flush=True)
            runner.close()
            del dec, runner
            torch.cuda.empty_cache()
    sys.exit(0)

for p in ("llama-1b", "opt-125m"):
    dec, x, nb = bs1_decoder(p, dev)
    for label, head, ov in (("one graph", None, None), ("split launch, head 1", 1, None),
                            ("split launch, head 2", 2, None), ("split launch, head 4", 4, None),
                            ("one graph, down BN 2 BK 2048 ahead", None, "down BN 2 BK 2048 ahead"),
                            ("one graph (again)", None, None)):
        G.OVERRIDES.clear()
        if ov:
            G.OVERRIDES.update(OV[ov](dec.shape))
        GR.head_layers = (lambda n, h=head: h) if head else _head
        runner = GR.GraphRunner(dec, [1], mode="full", progress=False,
                                split_launch=head is not None)
        runner.capture()
        graphs = runner.entries[1].graphs
        inp = runner._rows(1)[0]

        def replay():
            for g in graphs:
                g.replay()

        gpu = gpu_time_us(replay, inner=10, budget_s=BUDGET).median
        _, step = step_time_us(lambda: runner.step_packed(x), inner=20, sync_each=True, budget_s=BUDGET)
        _, bare = step_time_us(replay, inner=20, sync_each=True, budget_s=BUDGET)
        h_replay = host_time_us(replay, budget_s=BUDGET / 2).median
        h_copy = host_time_us(lambda: inp.copy_(x), budget_s=BUDGET / 2).median
        h_step = host_time_us(lambda: runner.step_packed(x), budget_s=BUDGET / 2).median
        print(f"{p} {label:36s}: GPU {gpu:7.1f} us ({nb / (gpu * 1e-6) / copy:.1%}); synced step "
              f"{step.median:7.1f} us ({nb / (step.median * 1e-6) / copy:.1%}), without the copy "
              f"{bare.median:7.1f}; host: replay call {h_replay:5.1f}, copy {h_copy:4.1f}, step_packed "
              f"{h_step:5.1f} us ({len(graphs)} graph(s))", flush=True)
        runner.close()
    GR.head_layers = _head
    G.OVERRIDES.clear()
    del dec
    torch.cuda.empty_cache()
