"""Kernel benchmark: each decode kernel at llama-1b's decode shapes, its achieved bandwidth
against the device-to-device copy bandwidth measured in the same run.

Each kernel is captured `REPS` times back to back in a CUDA graph and the graph is replayed, so
the figure is GPU time per kernel with no host launch cost in it (events around one launched
small kernel would time the host's enqueue instead).
"""
from __future__ import annotations

import torch

from microbench.engine.shapes import PRESETS
from microbench.bench.device import copy_bandwidth
from microbench.bench.env import environment
from microbench.bench.timing import WeightCycle, gpu_time_us, graph_of, stream_copies

REPS = 20


def cases(preset: str = "llama-1b", batches=(1, 16, 64), context: int = 4096,
          dtype=torch.bfloat16, device="cuda"):
    """(name, B, context, bytes, callable) per kernel and batch, bytes as the reference
    docstrings count them."""
    from microbench import kernels as K
    s = PRESETS[preset]
    e = torch.finfo(dtype).bits // 8
    H, Hkv, D, h, F = s.n_heads, s.n_kv_heads, s.head_dim, s.hidden, s.ffn
    out = []
    for B in batches:
        r = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)
        x, res, w = r(B, h), r(B, h), r(h)
        out.append(("rmsnorm", B, 0, (B * h * 2 + h) * e, lambda x=x, w=w: K.rmsnorm(x, w, 1e-5)))
        out.append(("rmsnorm+residual", B, 0, (4 * B * h + h) * e,
                    lambda x=x, w=w, res=res: K.rmsnorm(x, w, 1e-5, residual=res)))
        qkv = r(B, (H + 2 * Hkv) * D)
        q = qkv[:, :H * D].view(B, H, D)
        k = qkv[:, H * D:(H + Hkv) * D].view(B, Hkv, D)
        pos = torch.randint(0, context, (B,), device=device)
        out.append(("rope", B, 0, 2 * B * (H + Hkv) * D * e, lambda q=q, k=k, pos=pos: K.rope(q, k, pos, 5e5)))
        kc = torch.randn(B + 1, Hkv, context, D, device=device, dtype=dtype)
        vc = torch.randn_like(kc)
        v = qkv[:, (H + Hkv) * D:].view(B, Hkv, D)
        slots = torch.randperm(B, device=device)
        out.append(("store_kv", B, 0, 4 * B * Hkv * D * e,
                    lambda kc=kc, vc=vc, k=k, v=v, slots=slots, pos=pos: K.store_kv(kc, vc, k, v, slots, pos)))
        seq = torch.full((B,), context, dtype=torch.int32, device=device)
        qa = r(B, H, D)
        out.append(("decode_attention", B, context, (2 * B * Hkv * context * D + 2 * B * H * D) * e,
                    lambda qa=qa, kc=kc, vc=vc, slots=slots, seq=seq:
                    K.decode_attention(qa, kc, vc, slots, seq, D ** -0.5)))
        gu = r(B, 2 * F)
        out.append(("swiglu", B, 0, 3 * B * F * e, lambda gu=gu: K.swiglu(gu)))
        kc2, vc2 = kc.clone(), vc.clone()
        out.append(("rope_store_kv", B, 0, 2 * B * (H + 2 * Hkv) * D * e,
                    lambda q=q, k=k, v=v, kc=kc2, vc=vc2, slots=slots, pos=pos:
                    K.rope_store_kv(q, k, v, kc, vc, slots, pos, 5e5)))
        kc3, vc3 = kc.clone(), vc.clone()
        seq3 = seq.clone()
        sem = torch.zeros(B * Hkv, dtype=torch.int32, device=device)   # as the decoder keeps one
        out.append(("rope_store_attention", B, context,
                    (2 * B * Hkv * (context - 1) * D + B * (H + 2 * Hkv) * D + 2 * B * Hkv * D + B * H * D) * e,
                    lambda q=q, k=k, v=v, kc=kc3, vc=vc3, slots=slots, seq=seq3, sem=sem:
                    K.rope_store_attention(q, k, v, kc, vc, slots, seq, D ** -0.5, 5e5, semaphores=sem)))
        out += _matmul_cases(s, B, e, r)
    return out


def _matmul_cases(s, B, e, r):
    """The step's matmuls: the Triton skinny matmul with its fusion (norm prologue, residual or
    SwiGLU epilogue; at up to FAST_ROWS rows) against cuBLAS (F.linear) on the same weight. Bytes: the weight plus the rows."""
    import torch.nn.functional as F

    from microbench import kernels as K
    from microbench.engine.plan import Fusion, is_skinny
    h, Fw = s.hidden, s.ffn
    out = []
    for name, n_in, n_out, fused in (("qkv_proj", h, s.qkv_size, "norm"), ("o_proj", s.q_size, h, "residual"),
                                     ("gate_up_proj", h, 2 * Fw, "norm+swiglu"),
                                     ("down_proj", Fw, h, "residual"), ("lm_head", h, s.vocab, "norm")):
        # Each call reads the next of several copies of the weight, 200 MB or more in all, and
        # the graph makes a call per copy, so it streams weights from DRAM as a step does.
        n_copies = stream_copies(n_in * n_out * e)
        ws = [r(n_out, n_in) * n_in ** -0.5 for _ in range(n_copies)]
        w = WeightCycle(ws)
        x = r(B, n_in)
        nbytes = (n_in * n_out + B * n_in + B * n_out) * e
        out.append((f"{name} cublas", B, 0, nbytes,
                    _Streamed(lambda x=x, w=w: F.linear(x, w.next()), n_copies)))
        if not is_skinny(Fusion.ATTENTION, B):   # the decoder's plan runs cuBLAS here
            continue
        nw = r(n_in)
        if fused == "norm":
            fn = lambda x=x, w=w, nw=nw: K.rmsnorm_linear(x, nw, 1e-5, w.next())
            out.append((f"{name} triton+norm", B, 0, nbytes + n_in * e, _Streamed(fn, n_copies)))
        elif fused == "norm+swiglu":   # writes F values, not 2F
            fn = lambda x=x, w=w, nw=nw: K.rmsnorm_linear_swiglu(x, nw, 1e-5, w.next())
            out.append((f"{name} triton+norm+swiglu", B, 0, nbytes + (n_in - B * Fw) * e,
                        _Streamed(fn, n_copies)))
        else:
            res = r(B, n_out)
            out.append((f"{name} triton+residual", B, 0, nbytes + B * n_out * e,
                        _Streamed(lambda x=x, w=w, res=res: K.linear(x, w.next(), residual=res),
                                  n_copies)))
    return out


class _Streamed:
    """A matmul call cycling through `copies` weight copies: a graph of it makes one call per
    copy at least (`calls`), so it streams every copy, 200 MB or more, from DRAM; a graph of
    fewer calls would read a small weight's copies from the L2."""

    def __init__(self, fn, copies: int):
        self.fn, self.calls = fn, max(REPS, copies)

    def __call__(self):
        return self.fn()


def run_kernel_bench(preset="llama-1b", batches=(1, 16, 64), context=4096, budget_s=0.5) -> dict:
    dev = torch.device("cuda")
    copy = copy_bandwidth(dev, budget_s=budget_s)
    rows = []
    for name, B, ctx, nbytes, fn in cases(preset, batches, context, device=dev):
        calls = getattr(fn, "calls", REPS)
        g = graph_of(fn, calls)
        st = gpu_time_us(g.replay, inner=5, budget_s=budget_s)
        t = st.median / calls
        bw = nbytes / (t * 1e-6)
        rows.append(dict(kernel=name, B=B, context=ctx, bytes=nbytes, time_us=t,
                         p20_us=st.p20 / calls, p80_us=st.p80 / calls, n=st.n, bytes_per_s=bw,
                         frac_of_copy=bw / copy["bytes_per_s"], calls_per_graph=calls))
        del g
    return dict(kind="kernels", config=dict(preset=preset, batches=list(batches), context=context,
                                            dtype="bfloat16", reps_per_graph=REPS),
                env=environment(dev), copy=copy, rows=rows)
