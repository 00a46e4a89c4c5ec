"""Whether one kernel for a layer's FFN beats the decoder's two at a few rows: a chain of the
preset's FFNs (h = h + down(swiglu(rmsnorm(h) · W_gu))), one per layer, captured in one graph
per arm and replayed interleaved in one process.

Arms (`--arm`, two or more):

  two        the decoder's kernels: rmsnorm_linear_swiglu, then linear with the residual in its
             epilogue, each with the device table's config and the decoder's PDL mode
  fused      one kernel a layer. Program p owns C of the F intermediate features: it streams
             their gate and up rows (the norm in the prologue, as rmsnorm_linear_swiglu does),
             takes SwiGLU, rounds the C activations to the weights' dtype (as the two-kernel
             path's store does), multiplies them into the matching C columns of W_down and
             stores that partial sum of the layer's output, [B, hidden] in float32. Then a
             grid-wide barrier: each program counts itself on a counter (release) and spins
             until all have (acquire). Past it, program p sums the partials of its slice of the
             hidden columns in a fixed order, adds the residual and stores the output. Every
             weight byte is read once, and the down projection's loads start inside the same
             kernel as the gate/up's, with no launch between them. The grid must be resident
             at once (one wave), which the probe checks from the compiled kernel's registers
             and shared memory before it runs it
  split      the same programs in two launches, the second doing the reduction (the barrier
             replaced by a kernel boundary under PDL)
  partials   split's first launch alone: the partial sums without their reduction (each layer
             reads whatever the last arm replayed left in the layer outputs, so its output is
             not checked; this arm prices the programs' own streaming)

`fused`, `split` and `partials` take settings after a colon, e.g.
`fused:C=64,BK=128,BO=256,W=8,DT=1`: features a program, hidden columns a gate/up chunk, output
columns a down chunk, warps, and DT=1 to read W_down transposed ([F, hidden]), so that a
program's share is C contiguous rows instead of C values of each of W_down's rows. Defaults:
C = 32, BK = 128, BO = 256, W = 4, DT = 1.

Before anything is timed, every arm's graph is replayed once from the same input with its
outputs zeroed and its partials (each layer has its own) filled with NaN, and its last layer's
output is checked for NaN (a program that passed the barrier before another had stored its
partial reads a NaN, which every layer after carries) and against the chain's float32
reference. The spins give up after MAX_POLLS polls and count themselves, so a counting error
cannot hang the GPU; the probe stops if any did.

usage: python scripts/mlp_probe.py --preset llama-1b [--bs 1] [--arm two --arm fused ...]
           [--rounds 200]
Needs a CUDA GPU of SM 9.0 or newer. A probe for choosing what to build, not a toolkit
measurement."""
import os
import sys

import click
import torch
import triton
import triton.language as tl

from microbench.bench.timing import replays_in_turns
from microbench.engine import pdl as pdl_table
from microbench.engine.shapes import PRESETS
from microbench.engine.weights import random_weights
from microbench.kernels import rmsnorm_linear_swiglu, linear
from microbench.kernels._utils import pdl_enter, pdl_mode, to_dtype
from microbench.kernels.gemv import _chunk
from microbench.kernels.gemv_mma import load_w

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_POLLS = tl.constexpr(1 << 22)   # a spin gives up after this many polls
DEFAULTS = {"C": 32, "BK": 128, "BO": 256, "W": 4, "DT": 1}
MAX_ROWS = 16


@triton.jit
def _ffn(h_ptr, nw_ptr, wgu_ptr, wd_ptr, part_ptr, y_ptr, cnt_ptr, gave_up_ptr, eps,
         B: tl.constexpr, BLOCK_B: tl.constexpr, K: tl.constexpr, F: tl.constexpr,
         C: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, P: tl.constexpr,
         KC: tl.constexpr, BLOCK_P: tl.constexpr, PHASE: tl.constexpr, USE_PDL: tl.constexpr,
         DT: tl.constexpr):
    """PHASE 0: partials, barrier, reduction in one launch; 1: the partials alone; 2: the
    reduction alone (after a launch of PHASE 1)."""
    pid = tl.program_id(0)
    offs_b = tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    if PHASE != 2:
        offs_c = pid * C + tl.arange(0, C)
        mask_c = offs_c < F
        g_rows = wgu_ptr + offs_c[:, None] * K
        u_rows = g_rows + F * K                     # the up rows, F below the gate rows
        acc = tl.zeros([BLOCK_B, C], tl.float32)
        acc2 = tl.zeros([BLOCK_B, C], tl.float32)
        ss = tl.zeros([BLOCK_B], tl.float32)
        offs_k = tl.arange(0, BK)
        # chunk 0's weights before the wait: no kernel of the step writes them
        w, w2 = load_w(g_rows, u_rows, offs_k, mask_c, K, 2)
        pdl_enter(USE_PDL)
        # one chunk ahead, as the skinny matmuls' AHEAD loop
        for k0 in tl.range(BK, K, BK, num_stages=1):
            wn, w2n = load_w(g_rows, u_rows, k0 + offs_k, mask_c, K, 2)
            acc, acc2, ss = _chunk(acc, acc2, ss, w, w2, h_ptr, nw_ptr, offs_b, k0 - BK + offs_k,
                                   K, mask_b, K, 1, 2, 0, "ieee", False)
            w = wn
            w2 = w2n
        acc, acc2, ss = _chunk(acc, acc2, ss, w, w2, h_ptr, nw_ptr, offs_b,
                               (K - 1) // BK * BK + offs_k, K, mask_b, K, 1, 2, 0, "ieee", False)
        rstd = tl.rsqrt(ss / K + eps)
        g = acc * rstd[:, None]
        a = g / (1.0 + tl.exp(-g)) * (acc2 * rstd[:, None])
        a = to_dtype(a, wd_ptr.dtype.element_ty).to(tl.float32)   # [BLOCK_B, C]
        # this program's share of the down projection: out[:, o] = Σ_c a[:, c] · W_down[o, c],
        # read as W_down's columns (DT=0: C values of each of its rows) or as C whole rows of
        # its transpose (DT=1: contiguous)
        offs_o = tl.arange(0, BO)
        part = part_ptr + pid * (B * K) + offs_b[:, None] * K
        if DT:
            d_rows = wd_ptr + offs_c[:, None] * K
            wd = tl.load(d_rows + offs_o[None, :], mask=mask_c[:, None] & (offs_o < K)[None, :],
                         other=0.0)                                              # [C, BO]
        else:
            d_cols = wd_ptr + offs_c[None, :]
            wd = tl.load(d_cols + offs_o[:, None] * F, mask=(offs_o < K)[:, None] & mask_c[None, :],
                         other=0.0)                                              # [BO, C]
        for o0 in tl.range(BO, K + BO, BO, num_stages=1):
            # the next chunk's loads before this one's products (the last is fully masked)
            o_next = o0 + offs_o
            if DT:
                wdn = tl.load(d_rows + o_next[None, :],
                              mask=mask_c[:, None] & (o_next < K)[None, :], other=0.0)
                s = tl.sum(a[:, :, None] * wd.to(tl.float32)[None, :, :], axis=1)   # [BB, BO]
            else:
                wdn = tl.load(d_cols + o_next[:, None] * F,
                              mask=(o_next < K)[:, None] & mask_c[None, :], other=0.0)
                s = tl.sum(a[:, None, :] * wd.to(tl.float32)[None, :, :], axis=2)   # [BB, BO]
            o_this = o0 - BO + offs_o
            tl.store(part + o_this[None, :], s, mask=mask_b[:, None] & (o_this < K)[None, :])
            wd = wdn
    if PHASE == 0:
        tl.debug_barrier()          # every thread's stores done before the release counts them
        tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
        n = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
        polls = 0
        while (n < P) & (polls < MAX_POLLS):
            n = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
            polls += 1
        if n < P:
            tl.atomic_add(gave_up_ptr, 1)
        tl.debug_barrier()
    if PHASE == 2:
        pdl_enter(USE_PDL)
    if PHASE != 1:
        # program p sums the partials of hidden columns [p·KC, (p + 1)·KC) in program order
        offs_o = pid * KC + tl.arange(0, KC)
        mask_o = offs_o < K
        offs_p = tl.arange(0, BLOCK_P)
        for b in tl.static_range(B):
            # .cg: from L2, where the other programs' stores are
            parts = tl.load(part_ptr + offs_p[:, None] * (B * K) + b * K + offs_o[None, :],
                            mask=(offs_p < P)[:, None] & mask_o[None, :], other=0.0,
                            cache_modifier=".cg")
            r = tl.load(h_ptr + b * K + offs_o, mask=mask_o, other=0.0).to(tl.float32)
            tl.store(y_ptr + b * K + offs_o,
                     to_dtype(tl.sum(parts, axis=0) + r, y_ptr.dtype.element_ty), mask=mask_o)


def parse_arm(spec: str) -> tuple[str, dict]:
    """'two' -> ('two', {}); 'fused:C=16,W=8' -> ('fused', DEFAULTS with C 16 and W 8)."""
    kind, _, rest = spec.partition(":")
    if kind == "two" and not rest:
        return kind, {}
    if kind not in ("fused", "split", "partials"):
        raise click.BadParameter(f"{spec!r}: an arm is two, fused[:settings], split[:settings] "
                                 "or partials[:settings]", param_hint="--arm")
    cfg = dict(DEFAULTS)
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        ok = value.isdecimal() and (value in ("0", "1") if key == "DT" else
                                    not int(value) & (int(value) - 1) and 1 <= int(value) <= 1024)
        if key not in DEFAULTS or not ok:
            raise click.BadParameter(f"{spec!r}: settings are C=, BK=, BO= and W=, each a "
                                     "power of two from 1 to 1024, and DT=0 or 1",
                                     param_hint="--arm")
        cfg[key] = int(value)
    return kind, cfg


def reference(h0, layers, eps):
    """The chain in float32 from the bf16 weights: the last layer's output."""
    h = h0.float()
    for L in layers:
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * L["ffn_norm"].float()
        gu = x @ L["wgu"].float().t()
        F = gu.shape[1] // 2
        a = torch.nn.functional.silu(gu[:, :F]) * gu[:, F:]
        h = h + a @ L["wdown"].float().t()
    return h


def off_reference(out, want, tol=2e-2):
    """How far `out` is off `want` relative to want's largest value, when beyond `tol` (bf16
    rounding at each layer's stores stays within it); None when within."""
    err = (out.float() - want).abs().max().item() / max(want.abs().max().item(), 1e-6)
    return None if err <= tol else err


class Chain:
    """The preset's FFN weights (one set a layer), the chain's input and buffers."""

    def __init__(self, shape, bs: int, device, seed: int = 0):
        s = shape
        self.shape, self.bs = s, bs
        _, layers, _ = random_weights(s, torch.bfloat16, device, seed)
        self.layers = [{k: L[k] for k in ("ffn_norm", "wgu", "wdown")} for L in layers]
        for L in self.layers:        # W_down transposed, [F, hidden], for the DT=1 arms
            L["wdown_t"] = L["wdown"].t().contiguous()
        g = torch.Generator(device=device).manual_seed(seed + 1)
        self.h0 = torch.randn(bs, s.hidden, generator=g, device=device).to(torch.bfloat16)
        self.hs = torch.zeros(s.n_layers, bs, s.hidden, device=device, dtype=torch.bfloat16)
        self.cnt = torch.zeros(s.n_layers + 1, dtype=torch.int32, device=device)  # last: gave up
        self.parts = {}
        self.pdl = pdl_table.resolve(None, s, torch.bfloat16, device)(bs)

    @staticmethod
    def grid_of(shape, cfg) -> tuple[int, int, int]:
        """(programs, hidden columns each reduces, the programs' power of two)."""
        P = triton.cdiv(shape.ffn, cfg["C"])
        return P, triton.next_power_of_2(triton.cdiv(shape.hidden, P)), triton.next_power_of_2(P)

    def grid(self, cfg) -> tuple[int, int, int]:
        return self.grid_of(self.shape, cfg)

    def ffn_args(self, l, cfg, phase, use_pdl):
        s, L = self.shape, self.layers[l]
        P, KC, BLOCK_P = self.grid(cfg)
        if P not in self.parts:
            # each layer has its own partials, so a read before they are stored cannot find
            # the layer before's (the checked replay fills them with NaN first); one set per
            # grid, kept while the graphs that write them live
            self.parts[P] = torch.zeros(s.n_layers, P, self.bs, s.hidden, device=self.h0.device)
        h = self.h0 if l == 0 else self.hs[l - 1]
        wd = L["wdown_t" if cfg["DT"] else "wdown"]
        return ((h, L["ffn_norm"], L["wgu"], wd, self.parts[P][l], self.hs[l], self.cnt[l:],
                 self.cnt[s.n_layers:], float(s.norm_eps)),
                dict(B=self.bs, BLOCK_B=triton.next_power_of_2(self.bs), K=s.hidden, F=s.ffn,
                     C=cfg["C"], BK=cfg["BK"], BO=cfg["BO"], P=P, KC=KC, BLOCK_P=BLOCK_P,
                     PHASE=phase, USE_PDL=use_pdl, DT=cfg["DT"], num_warps=cfg["W"],
                     **({"launch_pdl": True} if use_pdl else {})))

    def step(self, kind: str, cfg: dict):
        """One pass of the chain in arm `kind`; the last layer's output."""
        s = self.shape
        self.cnt[:s.n_layers].zero_()
        mode = 0 if INTERPRET else pdl_mode(self.pdl)
        h = self.h0
        for l in range(s.n_layers):
            L = self.layers[l]
            if kind == "two":
                # the first kernel follows the counters' memset, not a kernel: no PDL
                a = rmsnorm_linear_swiglu(h, L["ffn_norm"], s.norm_eps, L["wgu"],
                                          pdl=self.pdl if l else False)
                h = linear(a, L["wdown"], residual=h, pdl=self.pdl)
                continue
            P = self.grid(cfg)[0]
            phases = {"split": (1, 2), "partials": (1,)}.get(kind, (1, 2) if INTERPRET else (0,))
            for i, phase in enumerate(phases):
                args, kw = self.ffn_args(l, cfg, phase, mode if l or i else 0)
                _ffn[(P,)](*args, **kw)
            h = self.hs[l]
        return h

    def gave_up(self) -> int:
        return int(self.cnt[-1].item())

    def problem(self, out, want):
        """What is wrong after a checked replay (None if nothing): a spin that gave up, a NaN in
        the last layer's output `out` (the replay fills the partials with NaN first, so a
        reduction that read one before its program stored it carries it), or `out` off the
        reference `want`."""
        if self.gave_up():
            return f"{self.gave_up()} spins gave up after {MAX_POLLS.value} polls"
        if out.isnan().any():
            return "NaN in the output: a partial was read before it was stored"
        err = off_reference(out, want)
        if err is None:
            return None
        return f"output off the reference by {err:.3g} of its largest value"


def resident_programs(compiled, sms: int) -> int:
    """How many programs of `compiled` fit on the GPU at once, by registers (allocated per warp
    in units of 256), shared memory (228 KiB an SM, 227 a block) and warps (64 an SM)."""
    warps = compiled.metadata.num_warps
    per_warp = -(-compiled.n_regs * 32 // 256) * 256
    by_regs = (65536 // max(per_warp, 1)) // warps
    shared = compiled.metadata.shared
    by_smem = (228 * 1024) // (shared + 1024) if shared else 32
    return sms * min(by_regs, by_smem, 64 // warps, 32)


@click.command()
@click.option("--preset", required=True, type=click.Choice(list(PRESETS)))
@click.option("--bs", type=click.IntRange(1, MAX_ROWS), default=1, show_default=True)
@click.option("--arm", "arms", multiple=True, default=("two", "fused", "split"),
              show_default=True,
              help="two, fused[:C=,BK=,BO=,W=,DT=], split[:...] or partials[:...]; two "
                   "arms at least")
@click.option("--rounds", type=click.IntRange(5, 100000), default=200, show_default=True)
def main(preset, bs, arms, rounds):
    specs = {spec: parse_arm(spec) for spec in arms}
    if len(specs) < 2:
        raise click.UsageError("--arm: give two different arms at least")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        sys.exit("mlp_probe needs a CUDA GPU of SM 9.0 or newer (PDL and the grid barrier)")
    run(preset, bs, specs, rounds)


def run(preset, bs, specs, rounds):
    dev = torch.device("cuda")
    chain = Chain(PRESETS[preset], bs, dev)
    s, sms = chain.shape, torch.cuda.get_device_properties(dev).multi_processor_count
    want = reference(chain.h0, chain.layers, s.norm_eps)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}; {preset} bs {bs}: {s.n_layers} FFNs a graph (hidden "
          f"{s.hidden}, ffn {s.ffn}), PDL {pdl_table.mode_name(chain.pdl)}, {rounds} rounds, "
          f"arms interleaved in rotating order; per layer = replay / layers")
    graphs = {}
    for spec, (kind, cfg) in specs.items():
        if kind != "two":
            P = chain.grid(cfg)[0]
            # the build every layer but the first launches (with PDL where the decoder has it)
            args, kw = chain.ffn_args(min(1, s.n_layers - 1), cfg, 0 if kind == "fused" else 1,
                                      pdl_mode(chain.pdl) if s.n_layers > 1 else 0)
            compiled = _ffn.warmup(*args, grid=(P,), **kw)
            compiled._init_handles()          # loads it, which sets its register count
            fit = resident_programs(compiled, sms)
            print(f"  {spec}: {P} programs, {compiled.n_regs} registers, "
                  f"{compiled.n_spills} spills, {compiled.metadata.shared} B shared; "
                  f"{fit} fit at once")
            if kind == "fused" and P > fit:
                sys.exit(f"{spec}: {P} programs do not fit on the GPU at once ({fit}); the "
                         "barrier would wait for programs that cannot start. Give a larger C")
        chain.step(kind, cfg)                               # compile, warm
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = chain.step(kind, cfg)
        chain.hs.zero_()
        out.zero_()
        for part in chain.parts.values():
            part.fill_(float("nan"))
        chain.cnt[-1].zero_()
        g.replay()
        torch.cuda.synchronize()
        wrong = None if kind == "partials" else chain.problem(out, want)
        if wrong:
            sys.exit(f"{spec}: {wrong}")
        graphs[spec] = g
    names = list(graphs)
    times = {n: [t / s.n_layers for t in ts]
             for n, ts in replays_in_turns(graphs, rounds).items()}
    if chain.gave_up():
        sys.exit(f"{chain.gave_up()} spins gave up while timed; the figures would hold the stalls")
    ffn_bytes = 3 * s.ffn * s.hidden * 2
    ref = torch.tensor(times[names[0]]).median().item()
    width = max(31, *map(len, names))
    print(f"{'arm':{width}s}  median us/layer  p25-p75          / first arm  weight GB/s")
    for n in names:
        t = torch.tensor(times[n])
        med = t.median().item()
        q = torch.quantile(t, torch.tensor([0.25, 0.75])).tolist()
        print(f"{n:{width}s}  {med:15.3f}  {q[0]:7.3f}-{q[1]:7.3f}  {med / ref:10.3f}  "
              f"{ffn_bytes / med / 1e3:11.0f}")


def compile_offline(shape, bs: int, cfg: dict, phase: int = 0, sm: int = 90):
    """The kernel compiled for SM `sm` without a GPU, specialised as a launch for `shape` at
    `bs` rows would be (16-byte aligned tensors): Triton's compiled kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    P, KC, BLOCK_P = Chain.grid_of(shape, cfg)
    sig = {n: "*bf16" for n in ("h_ptr", "nw_ptr", "wgu_ptr", "wd_ptr", "y_ptr")}
    sig.update(part_ptr="*fp32", cnt_ptr="*i32", gave_up_ptr="*i32", eps="fp32")
    const = dict(B=bs, BLOCK_B=triton.next_power_of_2(bs), K=shape.hidden, F=shape.ffn,
                 C=cfg["C"], BK=cfg["BK"], BO=cfg["BO"], P=P, KC=KC, BLOCK_P=BLOCK_P,
                 PHASE=phase, USE_PDL=1, DT=cfg["DT"])
    sig.update({n: "constexpr" for n in const})
    names = _ffn.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]]
             for n in ("h_ptr", "nw_ptr", "wgu_ptr", "wd_ptr", "y_ptr", "part_ptr")}
    src = ASTSource(_ffn, sig, constexprs={(names.index(n),): v for n, v in const.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", sm, 32), options={"num_warps": cfg["W"]})


if __name__ == "__main__":
    main()
