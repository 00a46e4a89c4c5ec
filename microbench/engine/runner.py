"""The graph runner: one CUDA graph per captured batch size, padding, eager fallback.

Pool memory is measured from the caching allocator's own books. `torch.cuda.graph` empties the
allocator's cache when a capture starts, so `memory_reserved()` read before and after a capture
can fall (cached blocks freed) while the pool grows: the difference is not the pool. Instead,
`pool_bytes()` sums the segments of `torch.cuda.memory_snapshot()` whose `segment_pool_id` is the
graph pool's id: exactly the device memory (cudaMalloc'd segments) the private pool holds. After
each capture the pool's size is read again; the growth is charged to that size.
"""
from __future__ import annotations

import gc
import time
import warnings
from dataclasses import dataclass, field

import torch

from microbench.engine.decoder import ToyDecoder
from microbench.engine.capture import fresh_cublas_workspaces, pool_bytes, side_stream
from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.nvtx import nvtx_range

MODES = ("none", "full", "piecewise")
POOLS = ("shared", "separate")
ORDERS = ("largest-first", "smallest-first")


@dataclass
class GraphEntry:
    """What one captured size owns: its graph(s), static outputs and captured input addresses."""
    size: int
    graphs: list
    output: torch.Tensor                 # logits [size, vocab], lives in the pool
    pieces: list = field(default_factory=list)   # piecewise: (q, residual) per layer
    seq_lens: torch.Tensor | None = None
    input_ptrs: tuple = ()
    warmup_s: float = 0.0
    capture_s: float = 0.0
    pool_bytes: int = 0                  # growth of the pool(s) charged to this size
    out_views: dict = field(default_factory=dict)  # bs -> output[:bs], made once


def head_layers(n_layers: int) -> int:
    """Layers in the first graph of a split launch: a quarter of the model, long enough on the
    GPU to cover the host's launch of the second graph."""
    return max(1, n_layers // 4)


class GraphRunner:
    """Runs `decoder` steps through captured graphs.

    mode: "none" (always eager), "full" (one graph per size for the whole step) or
    "piecewise" (graphs for the stretches between attention calls, attention eager).
    pool: "shared" (every graph in one pool from torch.cuda.graph_pool_handle()) or
    "separate" (each graph its own pool). order: "largest-first" (as vLLM captures, so later,
    smaller graphs reuse the memory the largest left free) or "smallest-first".
    debug: check on every replay that the static inputs are at their captured addresses.
    on_capture(done, total, size, seconds, pool_bytes): told as capture starts (done 0, size
    None) and after each size (captured or skipped), with the seconds since capture started and
    the pool's bytes so far; the runner itself prints nothing.
    split_launch (full mode): capture each size's step as two graphs, the first
    `head_layers(L)` layers and the rest, replayed back to back. The GPU starts on the short
    first graph while the host is still launching the second: a graph launch costs the host
    time per kernel node, which a synchronised step otherwise waits out with the GPU idle.
    """

    def __init__(self, decoder: ToyDecoder, sizes, mode: str = "full", pool: str = "shared",
                 order: str = "largest-first", debug: bool = False, on_capture=None,
                 warmup_steps: int = 2, split_launch: bool = False, bind_eager: bool | None = None):
        for name, v, allowed in (("mode", mode, MODES), ("pool", pool, POOLS),
                                 ("order", order, ORDERS)):
            if v not in allowed:
                raise ValueError(f"unknown {name} {v!r}; choose one of {', '.join(allowed)}")
        sizes = sorted(set(int(s) for s in sizes))
        if mode != "none" and sizes and sizes[-1] > decoder.max_batch:
            raise ValueError(f"largest capture size {sizes[-1]} exceeds the decoder's "
                             f"max_batch {decoder.max_batch}")
        self.decoder, self.mode, self.pool_kind, self.order = decoder, mode, pool, order
        self.requested_sizes = sizes if mode != "none" else []
        self.debug, self.on_capture, self.warmup_steps = debug, on_capture, warmup_steps
        self.split_launch = split_launch and mode == "full"
        self.entries: dict[int, GraphEntry] = {}
        self.skipped: list[int] = []
        self.dispatcher = PaddingDispatcher([])
        self.counts = dict(replays=0, eager_steps=0, fallbacks=0, padded_rows=0, real_rows=0)
        self._warned: set[int] = set()
        # eager steps (mode none, and fallbacks) run the decoder's bound steps (engine.bound),
        # as the sweep's eager arm does, where it binds: the triton backend on one GPU; by
        # default on CUDA only (bind_eager=None)
        self.bind_eager = decoder.device.type == "cuda" if bind_eager is None else bind_eager
        self._bound: dict = {}
        self._pool_ids: list = []
        n = max(self.requested_sizes, default=1)
        dev = decoder.device
        # Static inputs: rows are tokens, positions, slots. Padding rows point at the
        # scratch slot, position 0, so padded replays never touch a real sequence's cache.
        self._pad = torch.zeros(3, n, dtype=torch.long, device=dev)
        self._pad[2].fill_(decoder.scratch_slot)
        self._in = self._pad.clone()
        self._dirty = 0          # rows [0, _dirty) of _in may hold real inputs
        self._row_views: dict = {}
        s = decoder.shape
        self._attn_out = torch.empty(n, s.n_heads, s.head_dim, dtype=decoder.dtype, device=dev)

    # ---- capture -----------------------------------------------------------------------
    def capture(self) -> dict:
        """Capture every requested size; returns the capture report (also kept in .report)."""
        if self.mode == "none" or not self.requested_sizes:
            self.report = dict(capture_s=0.0, pool_bytes=0, sizes=[], skipped=[])
            return self.report
        sizes = sorted(self.requested_sizes, reverse=self.order == "largest-first")
        shared = torch.cuda.graph_pool_handle() if self.pool_kind == "shared" else None
        if shared is not None:
            self._pool_ids = [shared]
        dev = self.decoder.device
        stream = side_stream(dev.index if dev.index is not None else torch.cuda.current_device())
        t_all = time.perf_counter()
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection during capture could free tensors a graph still reads
        try:
            self._progress(0, len(sizes), None, t_all, 0)
            for i, size in enumerate(sizes):
                before = self._total_pool_bytes()
                try:
                    with nvtx_range(f"capture size {size}"):
                        entry = self._capture_one(size, shared, stream)
                except RuntimeError as e:   # torch.OutOfMemoryError is a RuntimeError too
                    if not isinstance(e, torch.OutOfMemoryError) and \
                            "out of memory" not in str(e).lower():
                        raise
                    self._skip(size, e)
                    self._progress(i + 1, len(sizes), size, t_all, before)
                    continue
                if shared is None:
                    self._pool_ids.extend(g.pool() for g in entry.graphs)
                after = self._total_pool_bytes()
                entry.pool_bytes = after - before
                self.entries[size] = entry
                self._progress(i + 1, len(sizes), size, t_all, after)
        finally:
            if gc_was_enabled:
                gc.enable()
        self.dispatcher = PaddingDispatcher(self.entries)
        sizes = [dict(size=e.size, warmup_s=e.warmup_s, capture_s=e.capture_s,
                      pool_bytes=e.pool_bytes) for _, e in sorted(self.entries.items())]
        self.report = dict(capture_s=time.perf_counter() - t_all,
                           pool_bytes=self._total_pool_bytes(), sizes=sizes,
                           skipped=list(self.skipped))
        return self.report

    def _skip(self, size: int, err: Exception):
        self.skipped.append(size)
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        warnings.warn(f"capture of size {size} ran out of device memory and was skipped "
                      f"({str(err).splitlines()[0][:120]})", RuntimeWarning, stacklevel=3)

    def _views(self, size: int):
        # Fresh slices, not the cached input_rows: the debug check must see where _in is now.
        return self._in[0, :size], self._in[1, :size], self._in[2, :size]

    def _capture_one(self, size: int, shared_pool, stream) -> GraphEntry:
        dec = self.decoder
        tokens, positions, slots = self._views(size)
        self._in.copy_(self._pad)  # warm-up and capture write KV to the scratch slot only
        self._dirty = 0
        t0 = time.perf_counter()
        # Eager warm-up on a side stream: JIT-compiles the Triton kernels, picks cuBLAS
        # heuristics and lets lazy allocations happen outside the capture.
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), nvtx_range(f"warm-up size {size}"):
            for _ in range(self.warmup_steps):
                dec.step(tokens, positions, slots)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        entry = GraphEntry(size=size, graphs=[], output=None)
        fresh_cublas_workspaces()
        if self.mode == "full" and self.split_launch:
            head = torch.cuda.CUDAGraph()
            with torch.cuda.graph(head, pool=shared_pool, stream=stream):
                state = dec.step_head(tokens, positions, slots, head_layers(dec.shape.n_layers))
            tail = torch.cuda.CUDAGraph()
            with torch.cuda.graph(tail, pool=shared_pool if shared_pool is not None else head.pool(),
                                  stream=stream):
                entry.output = dec.step_tail(state, tokens, positions, slots)
            entry.graphs += [head, tail]
            entry.pieces.append(state)     # the tensors the tail graph reads stay alive
        elif self.mode == "full":
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=shared_pool, stream=stream):
                entry.output = dec.step(tokens, positions, slots)
            entry.graphs.append(g)
        else:
            self._capture_pieces(entry, tokens, positions, slots, shared_pool, stream)
        torch.cuda.synchronize()
        fresh_cublas_workspaces()
        entry.warmup_s, entry.capture_s = t1 - t0, time.perf_counter() - t1
        entry.input_ptrs = self._addresses(size)
        return entry

    def _capture_pieces(self, entry, tokens, positions, slots, shared_pool, stream):
        dec, o = self.decoder, self._attn_out[:entry.size]
        res = None
        for i in range(dec.n_pieces):
            g = torch.cuda.CUDAGraph()
            # Each piece after the first may share the first piece's pool: one pool per size
            # with pool="separate", one for everything with pool="shared".
            pool = shared_pool if shared_pool is not None else (entry.graphs[0].pool()
                                                                 if entry.graphs else None)
            with torch.cuda.graph(g, pool=pool, stream=stream):
                if i == 0:
                    h, entry.seq_lens = dec.embed_inputs(tokens, positions)
                    out = dec.piece(0, tokens, positions, slots, h=h)
                else:
                    out = dec.piece(i, tokens, positions, slots, o=o, residual=res)
            entry.graphs.append(g)
            if i == dec.n_pieces - 1:
                entry.output = out
            else:
                q, res = out
                entry.pieces.append((q, res))
                dec.attention(i, q, slots, entry.seq_lens, out=o)

    def _total_pool_bytes(self) -> int:
        ids = {tuple(p) for p in self._pool_ids}
        return sum(pool_bytes(p) for p in ids)

    def _progress(self, done: int, total: int, size, t_start: float, pool: int):
        if self.on_capture is not None:
            self.on_capture(done, total, size, time.perf_counter() - t_start, pool)

    # ---- steps -------------------------------------------------------------------------
    def step(self, tokens, positions, slots):
        """One decode step for bs = len(tokens) sequences; logits [bs, vocab]."""
        bs = tokens.shape[0]
        padded = self._route(bs)
        if padded is None:
            bound = self._eager_step(bs)
            if bound is None:
                return self.decoder.step(tokens, positions, slots)
            return bound.step(tokens, positions, slots)
        _, tok, pos, slot = self.input_rows(bs)
        tok.copy_(tokens)
        pos.copy_(positions)
        slot.copy_(slots)
        return self._replay(bs, padded)

    def step_packed(self, inputs):
        """Like step, with tokens, positions and slots as the rows of one [3, bs] int64 tensor
        (an engine's persistent input batch): one copy instead of three."""
        bs = inputs.shape[1]
        padded = self._route(bs)
        if padded is None:
            bound = self._eager_step(bs)
            if bound is None:
                return self.decoder.step(inputs[0], inputs[1], inputs[2])
            return bound.step_packed(inputs)
        self.input_rows(bs)[0].copy_(inputs)
        return self._replay(bs, padded)

    def _route(self, bs: int):
        padded = self.dispatcher.pad(bs) if self.mode != "none" else None
        self.counts["real_rows"] += bs
        if padded is None:
            if self.mode != "none":
                self._fallback(bs)
            self.counts["eager_steps"] += 1
        return padded

    def input_rows(self, bs: int):
        """Cached views of the static inputs' first bs rows: (all three [3, bs], tokens,
        positions, slots). Views of one buffer, so their addresses never change: a caller may
        write a batch into the first view and replay it (what step_packed copies into)."""
        v = self._row_views.get(bs)
        if v is None:
            v = self._row_views[bs] = (self._in[:, :bs], self._in[0, :bs], self._in[1, :bs],
                                       self._in[2, :bs])
        return v

    def _replay(self, bs: int, padded: int):
        e = self.entries[padded]
        if padded > bs:
            self.counts["padded_rows"] += padded - bs
            # Rows [bs, dirty) hold an earlier, larger batch's inputs: point them back at the
            # scratch slot. Rows already holding padding need no copy (none in steady state).
            if self._dirty > bs:
                self._in[:, bs:self._dirty].copy_(self._pad[:, bs:self._dirty])
                self._dirty = bs
        self._dirty = max(self._dirty, bs)
        if self.debug:
            self._check_addresses(e)
        self.counts["replays"] += 1
        if self.mode == "full":
            for g in e.graphs:      # one graph, or two with split_launch
                g.replay()
        else:
            dec, slot_view, o = self.decoder, self._in[2, :padded], self._attn_out[:padded]
            e.graphs[0].replay()
            for l, (q, _) in enumerate(e.pieces):
                dec.attention(l, q, slot_view, e.seq_lens, out=o)
                e.graphs[l + 1].replay()
        out = e.out_views.get(bs)
        if out is None:  # a view per batch size, made once: slicing costs the host microseconds
            out = e.out_views[bs] = e.output[:bs]
        return out

    __call__ = step

    def _eager_step(self, bs: int):
        """The decoder's bound step at bs (made once), or None where it does not bind."""
        dec = self.decoder
        if not self.bind_eager or dec.backend != "triton" or dec.all_reduce is not None \
                or bs > dec.max_batch:
            return None
        if bs not in self._bound:
            self._bound[bs] = dec.bind(bs)
        return self._bound[bs]

    def _fallback(self, bs: int):
        self.counts["fallbacks"] += 1
        if bs not in self._warned:   # once per batch size: the counts hold the rest
            self._warned.add(bs)
            warnings.warn(f"batch size {bs} exceeds the largest captured size "
                          f"{self.dispatcher.max_size}: running eagerly", RuntimeWarning,
                          stacklevel=3)

    def _addresses(self, size: int) -> tuple:
        """Addresses a replay reads or writes outside its pool: the static inputs, the piecewise
        attention output, and every layer's KV cache."""
        dec = self.decoder
        return tuple(t.data_ptr() for t in (*self._views(size), self._attn_out,
                                             *dec.k_cache, *dec.v_cache))

    def _check_addresses(self, e: GraphEntry):
        now = self._addresses(e.size)
        if now != e.input_ptrs:
            moved = [i for i, (a, b) in enumerate(zip(e.input_ptrs, now)) if a != b]
            raise RuntimeError(f"buffers read by the graph of size {e.size} moved since capture "
                               f"(positions {moved} of inputs, attention output, KV caches)")

    def close(self):
        """Drop every graph and its pool; memory goes back to the device."""
        self.entries.clear()
        self.dispatcher = PaddingDispatcher([])
        self._pool_ids = []
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
