"""A toy decoder: real models' shapes, random weights, Triton kernels (or their torch references).

One decode step, per layer:

    x, residual = rmsnorm(h, residual)          # fused add + norm
    qkv = x @ Wqkv^T                            # one matmul for Q, K and V
    q, k = rope(q, k, positions)                # in place on views of qkv
    store_kv(k_cache, v_cache, k, v, slots, positions)
    o = decode_attention(q, k_cache, v_cache, slots, seq_lens)
    h = o @ Wo^T                                # residual added by the next fused norm
    x, residual = rmsnorm(h, residual)
    g = swiglu(x @ Wgu^T)
    h = g @ Wdown^T

The plan is `fusion` (`engine.plan.Fusion`, decided in `engine.plan`; the torch backend always
runs UNFUSED). With Fusion.MATMULS rope and the KV store are one kernel (`rope_store_kv`) at
every batch size, and at up to `plan.FAST_ROWS` rows the matmuls are
Triton skinny matmuls (`kernels.gemv`) that carry the rest: the norm in the prologue of QKV,
gate/up and the LM head, the residual add in the epilogue of O and down, swiglu in the epilogue
of gate/up. That path keeps the full hidden state h (no separate residual):

    qkv = rmsnorm(h) @ Wqkv^T ; rope_store_kv ; o = attention
    h = h + o @ Wo^T ; g = swiglu(rmsnorm(h) @ Wgu^T) ; h = h + g @ Wdown^T

six kernels a layer plus attention's reduce, instead of ten. With Fusion.ATTENTION (the
default) RoPE, the KV store and the merge of attention's split-KV partials move into the
attention kernel (`kernels.rope_store_attention`): it reads the QKV row itself, so a layer is

    qkv = rmsnorm(h) @ Wqkv^T ; o = rope_store_attention(qkv) ; O ; gate/up ; down

five kernels, four of them weight-streaming matmuls; at the batch sizes where the device's
attention table measured separate kernels faster (engine/splits.py), a step runs the
Fusion.MATMULS plan instead (`fusion_at`). Fusion.UNFUSED runs one kernel per operation.

then a final norm and the tied LM head. The step is written as `n_layers + 1` *pieces* separated
by the attention calls, so the graph runner can capture the pieces alone (piecewise mode) while
attention runs eagerly between them, as vLLM's PIECEWISE mode does.

The KV cache holds `max_batch + 1` slots: the last is a scratch slot that no sequence owns; the
graph runner sends padded rows there.
"""
from __future__ import annotations

import copy
from functools import partial

import torch

from microbench import kernels

from microbench.engine import blas as blas_modes
from microbench.engine import pdl as pdl_modes
from microbench.engine import plan
from microbench.engine import splits as splits_modes
from microbench.engine.bound import Binding
from microbench.engine.plan import Fusion
from microbench.engine.shapes import ModelShape
from microbench.engine.weights import random_weights

BACKENDS = ("triton", "torch")


class KernelOps:
    """The five decode kernels of one backend, looked up once."""

    def __init__(self, backend: str):
        suffix = "" if backend == "triton" else "_ref"
        for name in ("rmsnorm", "rope", "store_kv", "decode_attention", "swiglu"):
            setattr(self, name, getattr(kernels, name + suffix))


def kernel_ops(backend: str) -> KernelOps:
    """The decode kernels of `backend` ("triton", or "torch" for the references)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return KernelOps(backend)


class ToyDecoder(Binding):
    def __init__(self, shape: ModelShape, backend: str = "triton", max_batch: int = 64,
                 max_seq: int = 1024, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cuda", seed: int = 0,
                 fusion: Fusion = Fusion.ATTENTION, pdl=None,
                 blas: str | None = None, splits: str | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if max_batch < 1 or max_seq < 1:
            raise ValueError(f"max_batch and max_seq must be >= 1, got {max_batch}, {max_seq}")
        self.shape, self.backend = shape, backend
        self.max_batch, self.max_seq = max_batch, max_seq
        self.dtype, self.device = dtype, torch.device(device)
        self.ops = kernel_ops(backend)
        self.fusion = plan.backend_fusion(fusion, backend)
        # the Triton kernels launch with programmatic dependent launch where the GPU has it:
        # True lets the next one launch early and waits for its inputs, "late" lets the next
        # one launch only after the wait, False turns it off; None takes the modes measured for
        # this shape on this device, per batch size (engine/pdl.py). pdl_at(batch) is the mode
        # a step of that many rows launches with, eager or captured.
        self.pdl_at = pdl_modes.resolve(pdl, shape, dtype, self.device)
        # the wide matmuls' cuBLAS interface per row count (engine/blas.py; None: the table's,
        # which the torch reference backend does not take), and the zero bias the cuBLASLt
        # interface adds, made here so no capture allocates it
        self.blas = blas_modes.resolve(blas or (None if backend == "triton" else "cublas"),
                                       shape, dtype, self.device)
        # batch -> how the attention launches: the fused kernel's split of the cache ("fill",
        # "capped" or "half-tile"), or "separate" kernels (engine/splits.py; None: the table's)
        self.split_mode = splits_modes.resolve(splits, shape, dtype, self.device, max_seq)
        self._split_args = {}   # batch -> _split_kw's arguments
        self._zeros = torch.zeros(max(shape.qkv_size, shape.hidden, 2 * shape.ffn, shape.vocab),
                                  dtype=dtype, device=self.device)
        self.scratch_slot = max_batch
        self.scale = shape.head_dim ** -0.5
        # Tensor parallelism: a callable that all-reduces a row-parallel matmul's output in
        # place (set by microbench.bench.tp on each rank's shard); None on one GPU. With the residual
        # add in the O and down epilogues, only one rank (the owner) adds it before the sum.
        self.all_reduce = None
        self.residual_owner = True
        # while bind() records a step: {"record": list} passed to every kernel wrapper, which
        # appends its bound launch there; empty otherwise
        self._rec: dict = {}
        self.embed, self.layers, self.final_norm = random_weights(shape, dtype, self.device, seed)
        s = shape
        cache_shape = (max_batch + 1, s.n_kv_heads, max_seq, s.head_dim)
        self.k_cache = [torch.zeros(cache_shape, dtype=dtype, device=self.device)
                        for _ in range(s.n_layers)]
        self.v_cache = [torch.zeros(cache_shape, dtype=dtype, device=self.device)
                        for _ in range(s.n_layers)]
        # the fused attention's split counters (zero between calls; one per sequence and kv
        # head), kept here so a captured step holds no memset
        self.attn_semaphores = torch.zeros((max_batch + 1) * s.n_kv_heads, dtype=torch.int32,
                                           device=self.device)

    # ---- the step, as pieces between attention calls ------------------------------------
    @property
    def n_pieces(self) -> int:
        return self.shape.n_layers + 1

    def fusion_at(self, b: int) -> Fusion:
        """The plan a step of b rows runs: the decoder's, except that a fused-attention decoder
        runs the Fusion.MATMULS plan (attention as separate kernels) at the batch sizes whose
        attention mode is "separate" (engine/splits.py)."""
        if self.fusion == Fusion.ATTENTION and self.split_mode(b) == splits_modes.SEPARATE:
            return Fusion.MATMULS
        return self.fusion

    def attention_fused_at(self, b: int) -> bool:
        """Whether a step of b rows hands attention the QKV row, to do RoPE and the KV store
        itself."""
        return plan.attention_fused(self.fusion_at(b))

    def split_qkv(self, qkv):
        """Views q [B, H, D], k and v [B, Hkv, D] of a fused QKV row [B, (H + 2Hkv)D]."""
        return plan.split_qkv(self.shape, qkv)

    def _pre_attention(self, l: int, h, residual, positions, slots):
        """Norm, QKV, RoPE and KV store of layer l; returns (q, residual), or (the QKV row,
        residual) when attention does RoPE and the KV store itself."""
        L = self.layers[l]
        qkv, residual = self.norm_linear(h, L["attn_norm"], L["wqkv"], residual)  # [B, (H+2Hkv)D]
        if self.attention_fused_at(qkv.shape[0]):
            return qkv, residual
        q, k, v = self.split_qkv(qkv)
        return self.rope_store(l, q, k, v, slots, positions), residual

    def _post_attention(self, l: int, o, residual):
        """O projection and the FFN of layer l; returns (h, residual) with h not yet added, or
        (h, None) with h the full hidden state on the skinny path."""
        s, L = self.shape, self.layers[l]
        o = o.reshape(o.shape[0], s.q_size)
        if self.skinny(o.shape[0]):
            # residual is the hidden state (the skinny QKV's norm took it whole)
            h = self.linear(o, L["wo"], residual if self.residual_owner else None)
            self._reduce(h)
            g = self.norm_linear_swiglu(h, L["ffn_norm"], L["wgu"])
            h = self.linear(g, L["wdown"], h if self.residual_owner else None)
            self._reduce(h)
            return h, None
        h = self._mm(o, L["wo"])                                       # [B, hidden]
        self._reduce(h)
        gu, residual = self.norm_linear(h, L["ffn_norm"], L["wgu"], residual)  # [B, 2F]
        h = self._mm(self.ops.swiglu(gu, **self._rec), L["wdown"])      # [B, hidden]
        self._reduce(h)
        return h, residual

    def piece(self, i: int, tokens, positions, slots, o=None, residual=None, h=None):
        """Piece i of the step. Piece 0: embedding (or `h`, the rows embed_inputs gave) and
        layer 0 up to attention. Piece i in 1..L-1: layer i-1 after attention and layer i up to
        attention. Piece L: layer L-1 after attention, final norm, LM head. Returns (q, residual)
        or logits for the last (with the attention fused, q is the layer's whole QKV row)."""
        s = self.shape
        if i == 0:
            h, res = (self.embed[tokens] if h is None else h), None      # [B, hidden]
        else:
            h, res = self._post_attention(i - 1, o, residual)
        if i == s.n_layers:
            return self.norm_linear(h, self.final_norm, self.embed, res)[0]  # [B, vocab]
        q, res = self._pre_attention(i, h, res, positions, slots)
        return q, res

    # ---- the step's operations, fused or not ------------------------------------------------
    def skinny(self, b: int) -> bool:
        """Whether b rows take the fused skinny-matmul path."""
        return plan.is_skinny(self.fusion, b)

    def norm_linear(self, h, norm_w, w, residual=None):
        """(rmsnorm(h + residual) @ w^T, new residual); without a residual, h is the residual
        (on the skinny path there never is one: h is the full hidden state)."""
        eps = self.shape.norm_eps
        if self.skinny(h.shape[0]) and residual is None:
            return kernels.rmsnorm_linear(h, norm_w, eps, w, pdl=self.pdl_at(h.shape[0]),
                                          **self._rec), h
        if residual is None:
            x, residual = self.ops.rmsnorm(h, norm_w, eps, **self._rec), h
        else:
            x, residual = self.ops.rmsnorm(h, norm_w, eps, residual=residual, **self._rec)
        return self._mm(x, w), residual

    def linear(self, x, w, residual=None):
        """x @ w^T (+ residual in the skinny matmul's epilogue; the wide path adds none: its
        residual rides with the next fused norm)."""
        if self.skinny(x.shape[0]):
            return kernels.linear(x, w, residual=residual, pdl=self.pdl_at(x.shape[0]), **self._rec)
        if residual is not None:
            raise ValueError("linear: a residual is added on the skinny path only")
        return self._mm(x, w)

    def norm_linear_swiglu(self, h, norm_w, w_gu):
        """swiglu(rmsnorm(h) @ w_gu^T): one kernel on the skinny path. The wide step never
        calls it (its norm carries the residual); the three-kernel form keeps the method total."""
        eps = self.shape.norm_eps
        if self.skinny(h.shape[0]):
            return kernels.rmsnorm_linear_swiglu(h, norm_w, eps, w_gu, pdl=self.pdl_at(h.shape[0]),
                                                  **self._rec)
        x = self.ops.rmsnorm(h, norm_w, eps, **self._rec)
        return self.ops.swiglu(self._mm(x, w_gu), **self._rec)

    def rope_store(self, l: int, q, k, v, slots, positions):
        """RoPE on q and k, k and v into layer l's cache; returns the rotated q."""
        s = self.shape
        if plan.rope_in_store(self.fusion_at(q.shape[0])):
            return kernels.rope_store_kv(q, k, v, self.k_cache[l], self.v_cache[l], slots,
                                         positions, s.rope_theta, pdl=self.pdl_at(q.shape[0]),
                                         **self._rec)
        q, k = self.ops.rope(q, k, positions, s.rope_theta, **self._rec)
        self.ops.store_kv(self.k_cache[l], self.v_cache[l], k, v, slots, positions, **self._rec)
        return q

    def attention(self, l: int, q, slots, seq_lens, out=None):
        """Decode attention of layer l; with `out`, the result is written there (the graph
        runner's piecewise mode keeps attention's output at a fixed address). With the
        attention fused, q is the QKV row [B, (H + 2Hkv)D] and the new token (at position
        seq_lens - 1) is rotated and stored by the same kernel."""
        if self.attention_fused_at(q.shape[0]):
            B = q.shape[0]
            sem = self.attn_semaphores if B * self.shape.n_kv_heads <= self.attn_semaphores.numel() else None
            return kernels.rope_store_attention(*self.split_qkv(q), self.k_cache[l], self.v_cache[l],
                                                slots, seq_lens, self.scale, self.shape.rope_theta,
                                                out=out, semaphores=sem, pdl=self.pdl_at(B),
                                                **self._split_kw(B), **self._rec)
        args = (q, self.k_cache[l], self.v_cache[l], slots, seq_lens, self.scale)
        pdl = self.pdl_at(q.shape[0])
        if out is None:
            return self.ops.decode_attention(*args, pdl=pdl, **self._rec)
        if self.backend == "triton":
            return self.ops.decode_attention(*args, out=out, pdl=pdl, **self._rec)
        return out.copy_(self.ops.decode_attention(*args, pdl=pdl))

    def _split_kw(self, batch: int) -> dict:
        """rope_store_attention's split arguments for a step of `batch` rows (worked out once
        per batch size: the eager step asks at every layer)."""
        kw = self._split_args.get(batch)
        if kw is None:
            mode = self.split_mode(batch)
            kw = self._split_args[batch] = dict(
                capped=mode == "capped",
                block_n=splits_modes.block_n(mode, self.shape, self.device, self.dtype))
        return kw

    @staticmethod
    def seq_lens_for(positions):
        """Sequence i attends to positions [0, positions[i]] (its new token included)."""
        return (positions + 1).to(torch.int32)

    def embed_inputs(self, tokens, positions):
        """(the new tokens' embedding rows, seq_lens_for(positions)): one Triton kernel in the
        fused-attention plan (kernels.embed_seq_lens), else an index gather, an add and a cast."""
        if self.attention_fused_at(tokens.shape[0]):
            return kernels.embed_seq_lens(self.embed, tokens, positions,
                                          pdl=self.pdl_at(tokens.shape[0]), **self._rec)
        h, next_pos = self.embed[tokens], positions + 1
        seq_lens = next_pos.to(torch.int32)
        if self._rec:
            self._rec["record"] += [partial(torch.index_select, self.embed, 0, tokens, out=h),
                                    partial(torch.add, positions, 1, out=next_pos),
                                    partial(seq_lens.copy_, next_pos)]
        return h, seq_lens

    def _reduce(self, h):
        """A tensor-parallel shard's all-reduce of h, in place (recorded while binding)."""
        if self.all_reduce is not None:
            self.all_reduce(h)
            if self._rec:
                self._rec["record"].append(partial(self.all_reduce, h))

    def _mm(self, x, w):
        """x @ w^T through cuBLAS, by the interface chosen for its rows (engine/blas.py);
        while binding, recorded into the same output."""
        return blas_modes.linear(x, w, self.blas(x.shape[0]), self._zeros, self._rec.get("record"))

    def step(self, tokens, positions, slots):
        """One decode step for len(tokens) sequences: returns logits [B, vocab]."""
        state = self.step_head(tokens, positions, slots, self.shape.n_layers)
        return self.step_tail(state, tokens, positions, slots)

    def step_head(self, tokens, positions, slots, layers: int):
        """The step's first `layers` layers (through their attention); returns the state
        step_tail continues from. step = step_tail(step_head(..)): the graph runner's split
        launch captures the two as separate graphs."""
        h, seq_lens = self.embed_inputs(tokens, positions)
        o = res = None
        for i in range(layers):
            q, res = self.piece(i, tokens, positions, slots, o, res, h=h if i == 0 else None)
            o = self.attention(i, q, slots, seq_lens)
        return (layers, seq_lens, o, res)

    def step_tail(self, state, tokens, positions, slots):
        """The rest of the step after step_head: the remaining layers, final norm, LM head."""
        first, seq_lens, o, res = state
        for i in range(first, self.shape.n_layers):
            q, res = self.piece(i, tokens, positions, slots, o, res)
            o = self.attention(i, q, slots, seq_lens)
        return self.piece(self.shape.n_layers, tokens, positions, slots, o, res)

    __call__ = step

    def with_fusion(self, fusion: Fusion) -> "ToyDecoder":
        """The same decoder (weights, KV caches) running another plan."""
        twin = copy.copy(self)
        twin.fusion, twin._rec = plan.backend_fusion(fusion, self.backend), {}
        return twin

    # ---- helpers -------------------------------------------------------------------------
    def fill_cache(self, context: int, slots=None, seed: int = 1):
        """Fill positions [0, context) of the given slots (default: all real slots) with random
        K and V, so a step at position `context` does attention over a realistic history."""
        if not 0 <= context <= self.max_seq:
            raise ValueError(f"context must be in [0, {self.max_seq}], got {context}")
        slots = range(self.max_batch) if slots is None else slots
        gen = torch.Generator(device=self.device).manual_seed(seed)
        idx = torch.as_tensor(list(slots), device=self.device, dtype=torch.long)
        s = self.shape
        for cache in (*self.k_cache, *self.v_cache):
            fill = torch.randn(len(idx), s.n_kv_heads, context, s.head_dim, generator=gen,
                               device=self.device)
            cache[idx, :, :context] = fill.to(self.dtype)

    def attention_launches(self, b: int = 1) -> int:
        """Kernels one decode_attention call at batch b launches (split-KV adds a reduce,
        unless the attention is fused: its splits merge themselves)."""
        from microbench.kernels.decode_attention import num_splits_for
        if self.attention_fused_at(b):
            return 1
        return 1 if num_splits_for(b, self.shape.n_kv_heads, self.max_seq, self.device) == 1 else 2

    def launches_per_step(self, b: int = 1) -> dict[str, int]:
        """Kernel launches of one eager step, by launcher (the triton backend's plan; the
        profiler's count is reported beside it by the sweep)."""
        return plan.launch_counts(self.plan(b, 0))

    def plan(self, b: int, context: int, elt: int | None = None):
        """The kernels one eager step at batch b launches (plan.step_kernels for this
        decoder's plan at b and attention split; a tensor-parallel shard's all-reduces in place,
        plan.with_all_reduces)."""
        elt = self.embed.element_size() if elt is None else elt
        ks = plan.step_kernels(self.shape, b, context, elt, self.attention_launches(b),
                               fusion=self.fusion_at(b))
        return ks if self.all_reduce is None else plan.with_all_reduces(ks, b, self.shape.hidden, elt)

    def weight_bytes(self) -> int:
        return self.shape.n_params * self.embed.element_size()
