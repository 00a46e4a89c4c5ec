"""What one kernel boundary costs inside a CUDA graph, by how the next kernel waits for the one
before it.

A chain of L kernels, captured in one graph. Each program loads the first chunk of its share of
a weight (which no kernel writes, so it is loaded before any wait, as the decoder's matmuls do),
waits for the kernel before, reads that kernel's whole output (every program needs all of it, as
a matmul's programs need the whole input row), streams the rest of its weight share and writes
one value. The time per boundary is a replay's time over L. The ways of waiting, each in its own
graph, timed interleaved in one process:

  stream   no PDL: a kernel starts once the one before has completed
  pdl      PDL, launch_dependents first: the kernel launches while the one before runs, and
           griddepcontrol.wait holds it until that kernel has completed and flushed (the
           decoder's "early" mode)
  flag     PDL as above, without griddepcontrol.wait: each program spins on a counter that the
           programs of the kernel before increment (release, after their stores) until all
           have (acquire); one thread polls (Triton makes the scalar atomic_add of 0 one
           thread's ld.acquire) and a barrier releases the rest; the counters are zeroed at the
           start of each step
  flag-all the same, every thread polling with its own ld.acquire.gpu
  flag-late flag, with launch_dependents after the spin: only the next kernel's programs are
           resident and polling, not the whole chain's
  flag-nap flag, with a `nanosleep.u32 256` between polls (PTX sleeps up to twice that)

The flag modes cannot deadlock: a PDL kernel's programs launch only once every program of the
kernel before has run launch_dependents (is running or done), and no program spins on a later
kernel. A spin gives up after MAX_POLLS polls, so a counting error cannot hang the GPU; a spin
that gave up counts itself, and the probe stops, whether in the checked replay or while timed.
Before anything is timed, each mode's graph is replayed once with every output zeroed and every
kernel's output is checked against the chain's float32 reference (a kernel that read its input
before it was written reads zeros and is off by about half a unit), and in the flag modes every
counter against its program count.

usage: python scripts/boundary_probe.py [--programs 132,528,1056] [--mib 0,8] [--layers 64]
           [--rounds 200] [--modes stream,pdl,flag,flag-all,flag-late,flag-nap]
Needs a CUDA GPU of SM 9.0 or newer for the PDL modes (stream runs anywhere with CUDA). This is a
probe for choosing what to build, not a toolkit measurement."""
import os
import sys

import click
import torch
import triton
import triton.language as tl

from microbench.bench.timing import replays_in_turns

MODES = {"stream": 0, "pdl": 1, "flag": 2, "flag-all": 3, "flag-late": 4, "flag-nap": 5}
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_POLLS = tl.constexpr(1 << 22)  # a spin gives up after this many polls
MOST_PROGRAMS = 8192


@triton.jit
def _ld_acquire(ptr):
    """One acquire load at GPU scope (every thread of the program issues it)."""
    return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _count(ptr, ALL: tl.constexpr):
    """The counter at ptr, read with acquire: by one thread (Triton makes a scalar atomic_add of
    0 one thread's ld.acquire, the value shared through a barrier), or by every thread (ALL)."""
    if ALL:
        n = tl.max(_ld_acquire(ptr + tl.zeros([1], tl.int32)), axis=0)
    else:
        n = tl.atomic_add(ptr, 0, sem="acquire", scope="gpu")
    return n


@triton.jit
def _nap(n):
    """nanosleep.u32 256 (every thread; PTX sleeps up to twice that)."""
    return tl.inline_asm_elementwise("nanosleep.u32 256; mov.b32 $0, $1;", "=r,r",
                                     [n + tl.zeros([1], tl.int32)], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _relay(src_ptr, dst_ptr, w_ptr, prev_cnt_ptr, cnt_ptr, gave_up_ptr, P, MODE: tl.constexpr,
           FIRST: tl.constexpr, SHARE: tl.constexpr, CHUNK: tl.constexpr,
           NCHUNK: tl.constexpr, READ_N: tl.constexpr, GDC: tl.constexpr = True):
    pid = tl.program_id(0)
    offs = tl.arange(0, CHUNK)
    w_base = w_ptr + pid.to(tl.int64) * SHARE
    # chunk 0 of the program's SHARE weights, before any wait
    wsum = tl.sum(tl.load(w_base + offs, mask=offs < SHARE, other=0.0).to(tl.float32))
    if MODE == 1:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    if MODE >= 2:
        # (GDC is off under the CPU interpreter, which has no griddepcontrol)
        if GDC and MODE != 4:
            tl.extra.cuda.gdc_launch_dependents()
        if not FIRST:
            n = _count(prev_cnt_ptr, MODE == 3)
            polls = 0
            while (n < P) & (polls < MAX_POLLS):
                if MODE == 5:
                    _nap(n)
                n = _count(prev_cnt_ptr, MODE == 3)
                polls += 1
            if n < P:
                tl.atomic_add(gave_up_ptr, 1)
            tl.debug_barrier()
        if GDC and MODE == 4:
            tl.extra.cuda.gdc_launch_dependents()
    # the kernel before's whole output, from L2 (.cg: written by other programs)
    offs_x = tl.arange(0, READ_N)
    x = tl.load(src_ptr + offs_x, mask=offs_x < P, other=0.0, cache_modifier=".cg")
    for c in range(1, NCHUNK):
        o = c * CHUNK + offs
        wsum += tl.sum(tl.load(w_base + o, mask=o < SHARE, other=0.0).to(tl.float32))
    tl.store(dst_ptr + pid, tl.sum(x) * 0.5 / P + 1.0 + wsum * 1e-4 + pid * 1e-3)
    if MODE >= 2:
        tl.debug_barrier()          # every thread's store done before the release counts it
        tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")


def reference(w: torch.Tensor, layers: int, programs: int) -> torch.Tensor:
    """The chain in float32 PyTorch, [layers, programs]: kernel i's output from kernel i - 1's
    (zeros before the first), each program adding its weight share's sum."""
    wsum = w.float().view(layers, programs, -1).sum(dim=2)
    x = torch.zeros(programs, device=w.device)
    pid = torch.arange(programs, device=w.device, dtype=torch.float32)
    outs = []
    for i in range(layers):
        x = x.sum() * 0.5 / programs + 1.0 + wsum[i] * 1e-4 + pid * 1e-3
        outs.append(x)
    return torch.stack(outs)


def off_reference(out: torch.Tensor, want: torch.Tensor):
    """How far any kernel's output is off its reference, when beyond float32 summation order
    (1e-5 of the largest value): a kernel adds 1 to half its input's mean, so one that read its
    input before it was written (zeros: the outputs are zeroed before the checked replay) is off
    by about half a unit. None when within."""
    err = (out.float() - want).abs().max().item()
    return None if err <= 1e-5 * max(1.0, want.abs().max().item()) else err


def weight_share(mib: float, programs: int) -> tuple[int, int, int]:
    """(SHARE, CHUNK, NCHUNK): the weight elements a program reads for `mib` MiB a kernel (a
    multiple of 64, at least 128: each program's share starts on a 128-byte boundary, so chunks
    of 1024 elements or more load as 16-byte vectors, as the matmuls' do), the elements it loads
    at a time (a power of two, at most 4096) and how many chunks that takes."""
    share = max(128, 64 * round(mib * 2**20 / (2 * programs) / 64))
    chunk = min(4096, triton.next_power_of_2(share))
    return share, chunk, triton.cdiv(share, chunk)


class Chain:
    """L relay kernels over one weight, their outputs and counters, launched in one mode."""

    def __init__(self, layers: int, programs: int, mib: float, device):
        self.share, self.chunk, self.nchunk = weight_share(mib, programs)
        self.layers, self.programs = layers, programs
        self.bytes = 2 * programs * self.share           # weight bytes a kernel reads
        g = torch.Generator(device=device).manual_seed(0)
        self.w = torch.randn(layers * programs * self.share, device=device, generator=g,
                             dtype=torch.bfloat16)
        self.bufs = torch.zeros(layers + 1, programs, device=device)
        self.cnt = torch.zeros(layers + 1, dtype=torch.int32, device=device)  # last: spins given up

    def step(self, mode: int):
        self.cnt[:self.layers].zero_()
        per = self.programs * self.share
        for i in range(self.layers):
            # the first kernel launches without PDL: it follows the counters' memset, not a kernel
            _relay[(self.programs,)](
                self.bufs[i], self.bufs[i + 1], self.w[i * per:], self.cnt[max(i - 1, 0):],
                self.cnt[i:], self.cnt[self.layers:], self.programs, MODE=mode, FIRST=i == 0,
                SHARE=self.share, CHUNK=self.chunk, NCHUNK=self.nchunk,
                READ_N=triton.next_power_of_2(self.programs), GDC=not INTERPRET, num_warps=4,
                **({"launch_pdl": True} if mode and i else {}))
        return self.bufs[1:]

    def problem(self, mode: int, want: torch.Tensor):
        """What is wrong with the outputs and counters the steps since `gave_up` was last
        zeroed left (None if nothing): a spin that gave up (first: the outputs after it are off
        too), in the flag modes a counter short of its program count, or any kernel's output
        off `want`."""
        if self.gave_up():
            return f"{self.gave_up()} spins gave up after {MAX_POLLS.value} polls"
        counts = self.cnt[:self.layers].tolist()
        if mode >= 2 and counts != [self.programs] * self.layers:
            return f"counters {counts} where each should reach {self.programs}"
        err = off_reference(self.bufs[1:], want)
        if err is not None:
            return (f"output off the reference by {err:.3g}: a kernel read its input before it "
                    "was written")
        return None

    def gave_up(self) -> int:
        """How many spins gave up since the count was last zeroed."""
        return int(self.cnt[self.layers].item())


def _ints(text, option, most):
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated whole numbers",
                                 param_hint=option) from None
    if any(not 1 <= v <= most for v in vals):
        raise click.BadParameter(f"{text!r}: each must be from 1 to {most}", param_hint=option)
    return vals


def _mibs(text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = [float("nan")]
    if not all(0 <= v < 1e6 for v in vals):      # (NaN fails every comparison)
        raise click.BadParameter(f"{text!r}: give comma-separated numbers from 0 up to 1e6",
                                 param_hint="--mib")
    return vals


@click.command()
@click.option("--programs", default="132,528,1056", show_default=True,
              help=f"programs a kernel (comma-separated, at most {MOST_PROGRAMS})")
@click.option("--mib", default="0,8", show_default=True,
              help="weight MiB each kernel streams (comma-separated; 0: a 256-byte share)")
@click.option("--layers", default=64, show_default=True, type=click.IntRange(2, 4096))
@click.option("--rounds", default=200, show_default=True, type=click.IntRange(5, 100000))
@click.option("--modes", default="stream,pdl,flag,flag-all,flag-late,flag-nap", show_default=True)
def main(programs, mib, layers, rounds, modes):
    # (at most MOST_PROGRAMS: the check's tolerance grows with the program count, and one stale
    # value of the output before counts 1/programs of a kernel's input)
    progs = _ints(programs, "--programs", MOST_PROGRAMS)
    mibs, names = _mibs(mib), modes.split(",")
    bad = [m for m in names if m not in MODES]
    if bad:
        raise click.BadParameter(f"unknown {', '.join(map(repr, bad))}; modes are "
                                 f"{', '.join(MODES)}", param_hint="--modes")
    if len(set(names)) < len(names):
        raise click.BadParameter(f"{modes!r}: give each mode once", param_hint="--modes")
    if not torch.cuda.is_available():
        sys.exit("boundary_probe needs a CUDA GPU; none is visible")
    if torch.cuda.get_device_capability()[0] < 9 and names != ["stream"]:
        sys.exit("the pdl and flag modes need SM 9.0 or newer; give --modes stream")
    try:
        run(progs, mibs, layers, rounds, names)
    except torch.cuda.OutOfMemoryError:
        sys.exit(f"out of GPU memory for {layers} kernels' weights at the largest --mib and "
                 "--programs; give fewer --layers or MiB")


def run(progs, mibs, layers, rounds, names):
    """Build, check and time the chain at each program count and size in every mode, printing
    a row each."""
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}; {layers} kernels a graph, {rounds} rounds, modes interleaved "
          f"in rotating order; per boundary = replay / kernels")
    print("programs  weight MiB  mode       median us/boundary  p25-p75              "
          "over pdl  weight GB/s")
    for p in progs:
        for m in mibs:
            chain = Chain(layers, p, m, dev)
            want = reference(chain.w, layers, p)
            graphs = {}
            for name in names:
                chain.step(MODES[name])                         # compile, warm
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    chain.step(MODES[name])
                chain.bufs.zero_()
                chain.cnt[layers].zero_()
                g.replay()
                torch.cuda.synchronize()
                wrong = chain.problem(MODES[name], want)
                if wrong:
                    sys.exit(f"{name} at {p} programs, {m} MiB: {wrong}")
                graphs[name] = g
            times = {name: [t / layers for t in ts]
                     for name, ts in replays_in_turns(graphs, rounds).items()}
            if chain.gave_up():
                sys.exit(f"{p} programs, {m} MiB: {chain.gave_up()} spins gave up after "
                         f"{MAX_POLLS.value} polls while timed; the figures would hold the stalls")
            ref = torch.tensor(times["pdl"]).median().item() if "pdl" in times else None
            for name in names:
                t = torch.tensor(times[name])
                med = t.median().item()
                q = torch.quantile(t, torch.tensor([0.25, 0.75])).tolist()
                over = f"{med / ref:8.3f}" if ref else "       -"
                bw = f"{chain.bytes / med / 1e3:10.0f}" if m else "         -"
                print(f"{p:8d}  {chain.bytes / 2**20:10.2f}  {name:9s}  {med:18.3f}  "
                      f"{q[0]:8.3f}-{q[1]:8.3f}  {over}  {bw}")
            del graphs, chain, want      # freed before the next size's chain is made


if __name__ == "__main__":
    main()
