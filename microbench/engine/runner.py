"""The graph runner: one CUDA graph per captured batch size, padding, eager fallback.

Pool memory is measured from the caching allocator's own books. `torch.cuda.graph` empties the
allocator's cache when a capture starts, so `memory_reserved()` read before and after a capture
can fall (cached blocks freed) while the pool grows: the difference is not the pool. Instead,
`pool_bytes()` sums the segments of `torch.cuda.memory_snapshot()` whose `segment_pool_id` is the
graph pool's id: exactly the device memory (cudaMalloc'd segments) the private pool holds. After
each capture the pool's size is read again; the growth is charged to that size, and each
capture pass (two under full_and_piecewise) is charged the growth over the pass.
"""
from __future__ import annotations

import gc
import time
import warnings

import torch

from microbench.engine.decoder import ToyDecoder
from microbench.engine.capture import fresh_cublas_workspaces, pool_bytes, side_stream
from microbench.engine.dispatch import CudagraphDispatcher, PaddingDispatcher
from microbench.engine.graphs import (GraphEntry, check_addresses, head_layers, record_full,
                                     record_pieces, replay_pieces)
from microbench.engine.modes import MODES, ORDERS, POOLS, ROUTINES
from microbench.engine.nvtx import nvtx_range

__all__ = ["GraphRunner", "GraphEntry", "head_layers", "MODES", "POOLS", "ORDERS"]


class GraphRunner:
    """Runs `decoder` steps through captured graphs.

    mode: "none" (always eager), "full" (one graph per size for the whole step),
    "piecewise" (graphs for the stretches between attention calls, attention eager) or
    "full_and_piecewise" (vLLM's default: a piecewise pass of every size, then a full pass of
    the sizes up to full_max_size, both into the one pool; uniform decode steps replay full
    graphs, others piecewise ones: engine.dispatch.CudagraphDispatcher).
    pool: "shared" (every graph in one pool from torch.cuda.graph_pool_handle()) or
    "separate" (each graph its own pool). order: "largest-first" (as vLLM captures, so later,
    smaller graphs reuse the memory the largest left free) or "smallest-first".
    debug: check on every replay that the static inputs are at their captured addresses.
    on_capture(done, total, size, seconds, pool_bytes): told as a capture pass starts (done 0,
    size None) and after each size (captured or skipped), with the seconds since the pass
    started and the pool's bytes so far; under full_and_piecewise each pass calls it with
    routine="piecewise" or "full" too. The runner itself prints nothing.
    split_launch (full mode): capture each size's step as two graphs, the first
    `head_layers(L)` layers and the rest, replayed back to back. The GPU starts on the short
    first graph while the host is still launching the second: a graph launch costs the host
    time per kernel node, which a synchronised step otherwise waits out with the GPU idle.
    full_max_size (full_and_piecewise): the largest size the full pass captures (vLLM's
    max_num_seqs times the decode query length, 1 here); None: every size.
    """

    def __init__(self, decoder: ToyDecoder, sizes, mode: str = "full", pool: str = "shared",
                 order: str = "largest-first", debug: bool = False, on_capture=None,
                 warmup_steps: int = 2, split_launch: bool = False, bind_eager: bool | None = None,
                 full_max_size: int | None = None):
        for name, v, allowed in (("mode", mode, MODES), ("pool", pool, POOLS),
                                 ("order", order, ORDERS)):
            if v not in allowed:
                raise ValueError(f"unknown {name} {v!r}; choose one of {', '.join(allowed)}")
        if full_max_size is not None and mode != "full_and_piecewise":
            raise ValueError(f"full_max_size caps the full pass of full_and_piecewise, not {mode}")
        sizes = sorted(set(int(s) for s in sizes))
        if mode != "none" and sizes and sizes[-1] > decoder.max_batch:
            raise ValueError(f"largest capture size {sizes[-1]} exceeds the decoder's "
                             f"max_batch {decoder.max_batch}")
        self.decoder, self.mode, self.pool_kind, self.order = decoder, mode, pool, order
        self.requested_sizes = sizes if mode != "none" else []
        self.full_max_size = full_max_size
        self.debug, self.on_capture, self.warmup_steps = debug, on_capture, warmup_steps
        self.split_launch = split_launch and mode == "full"
        self.routines = ROUTINES[mode]
        self._dual = len(self.routines) > 1
        # routine -> size -> entry: the graphs each pass captured
        self.graphs: dict[str, dict[int, GraphEntry]] = {r: {} for r in self.routines}
        self.skipped: list[int] = []
        self.dispatcher = self._dispatcher()
        self.counts = dict(replays=0, eager_steps=0, fallbacks=0, padded_rows=0, real_rows=0,
                           full_replays=0, piecewise_replays=0)
        self._warned: set = set()
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

    @property
    def entries(self) -> dict[int, GraphEntry]:
        """Size -> entry of the graphs a uniform decode step replays: the one pass's, or under
        full_and_piecewise the full pass's (`graphs` holds both)."""
        return self.graphs.get("full", self.graphs.get("piecewise", {}))

    def pass_sizes(self, routine: str) -> list[int]:
        """The sizes a pass captures: every requested size, the full pass of full_and_piecewise
        only those up to full_max_size (vLLM captures decode graphs up to max_num_seqs)."""
        cap = self.full_max_size if self._dual and routine == "full" else None
        return [s for s in self.requested_sizes if cap is None or s <= cap]

    def _dispatcher(self):
        if self._dual:
            return CudagraphDispatcher(self.graphs["full"], self.graphs["piecewise"])
        return PaddingDispatcher(self.entries)

    # ---- capture -----------------------------------------------------------------------
    def capture(self) -> dict:
        """Capture every pass (one, or two under full_and_piecewise); returns the capture
        report (also kept in .report): seconds, pool bytes, each size's figures, skipped
        sizes, and `passes`, each pass's routine, sizes, seconds, pool growth and skips."""
        if self.mode == "none" or not self.requested_sizes:
            self.report = dict(capture_s=0.0, pool_bytes=0, sizes=[], skipped=[])
            return self.report
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
            passes = [self._capture_pass(r, shared, stream) for r in self.routines]
        finally:
            if gc_was_enabled:
                gc.enable()
        self.dispatcher = self._dispatcher()
        sizes = [dict(size=e.size, warmup_s=e.warmup_s, capture_s=e.capture_s,
                      pool_bytes=e.pool_bytes, routine=r)
                 for r in self.routines for _, e in sorted(self.graphs[r].items())]
        self.report = dict(capture_s=time.perf_counter() - t_all,
                           pool_bytes=self._total_pool_bytes(), sizes=sizes,
                           skipped=list(self.skipped), passes=passes)
        return self.report

    def _capture_pass(self, routine: str, shared, stream) -> dict:
        """One routine's sizes in the runner's order; the pass's figures."""
        sizes = sorted(self.pass_sizes(routine), reverse=self.order == "largest-first")
        t0, start = time.perf_counter(), self._total_pool_bytes()
        skipped = []
        self._progress(0, len(sizes), None, t0, start, routine)
        for i, size in enumerate(sizes):
            before = self._total_pool_bytes()
            try:
                with nvtx_range(f"capture size {size}" + (f" ({routine})" * self._dual)):
                    entry = self._capture_one(size, shared, stream, routine)
            except RuntimeError as e:   # torch.OutOfMemoryError is a RuntimeError too
                if not isinstance(e, torch.OutOfMemoryError) and \
                        "out of memory" not in str(e).lower():
                    raise
                self._skip(size, e)
                skipped.append(size)
                self._progress(i + 1, len(sizes), size, t0, before, routine)
                continue
            if shared is None:
                self._pool_ids.extend(g.pool() for g in entry.graphs)
            after = self._total_pool_bytes()
            entry.pool_bytes, entry.routine = after - before, routine
            self.graphs[routine][size] = entry
            self._progress(i + 1, len(sizes), size, t0, after, routine)
        return dict(routine=routine, sizes=sorted(self.graphs[routine]),
                    capture_s=time.perf_counter() - t0,
                    pool_bytes=self._total_pool_bytes() - start, skipped=skipped)

    def _skip(self, size: int, err: Exception):
        self.skipped.append(size)
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        warnings.warn(f"capture of size {size} ran out of device memory and was skipped "
                      f"({str(err).splitlines()[0][:120]})", RuntimeWarning, stacklevel=4)

    def _views(self, size: int):
        # Fresh slices, not the cached input_rows: the debug check must see where _in is now.
        return self._in[0, :size], self._in[1, :size], self._in[2, :size]

    def _capture_one(self, size: int, shared_pool, stream, routine: str = "full") -> GraphEntry:
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
        entry = GraphEntry(size=size, graphs=[], output=None, routine=routine)
        fresh_cublas_workspaces()
        if routine == "full":
            record_full(entry, dec, tokens, positions, slots, shared_pool, stream,
                        self.split_launch)
        else:
            record_pieces(entry, dec, tokens, positions, slots, self._attn_out[:size],
                          shared_pool, stream)
        torch.cuda.synchronize()
        fresh_cublas_workspaces()
        entry.warmup_s, entry.capture_s = t1 - t0, time.perf_counter() - t1
        entry.input_ptrs = self._addresses(size)
        return entry

    def _total_pool_bytes(self) -> int:
        ids = {tuple(p) for p in self._pool_ids}
        return sum(pool_bytes(p) for p in ids)

    def _progress(self, done: int, total: int, size, t_start: float, pool: int, routine: str):
        if self.on_capture is None:
            return
        args = (done, total, size, time.perf_counter() - t_start, pool)
        if self._dual:
            self.on_capture(*args, routine=routine)
        else:
            self.on_capture(*args)

    # ---- steps -------------------------------------------------------------------------
    def step(self, tokens, positions, slots, uniform: bool = True):
        """One decode step for bs = len(tokens) sequences; logits [bs, vocab]. uniform=False
        marks the batch as not a uniform decode (a mixed prefill and decode batch, in an
        engine): under full_and_piecewise it replays a piecewise graph, never a full one."""
        bs = tokens.shape[0]
        routine, padded = self._route(bs, uniform)
        if padded is None:
            bound = self._eager_step(bs)
            if bound is None:
                return self.decoder.step(tokens, positions, slots)
            return bound.step(tokens, positions, slots)
        _, tok, pos, slot = self.input_rows(bs)
        tok.copy_(tokens)
        pos.copy_(positions)
        slot.copy_(slots)
        return self._replay(bs, padded, routine)

    def step_packed(self, inputs, uniform: bool = True):
        """Like step, with tokens, positions and slots as the rows of one [3, bs] int64 tensor
        (an engine's persistent input batch): one copy instead of three."""
        bs = inputs.shape[1]
        routine, padded = self._route(bs, uniform)
        if padded is None:
            bound = self._eager_step(bs)
            if bound is None:
                return self.decoder.step(inputs[0], inputs[1], inputs[2])
            return bound.step_packed(inputs)
        self.input_rows(bs)[0].copy_(inputs)
        return self._replay(bs, padded, routine)

    def route(self, bs: int, uniform: bool = True) -> tuple[str, int | None]:
        """What a step of bs sequences would run, counting nothing: ("full" or "piecewise", the
        graph's size), or ("eager", None)."""
        if self.mode == "none":
            return "eager", None
        if self._dual:
            return self.dispatcher.dispatch(bs, uniform)
        padded = self.dispatcher.pad(bs)
        return (self.mode, padded) if padded is not None else ("eager", None)

    def _route(self, bs: int, uniform: bool):
        self.counts["real_rows"] += bs
        routine, padded = self.route(bs, uniform)
        if padded is None:
            if self.mode != "none":
                self._fallback(bs, uniform)
            self.counts["eager_steps"] += 1
        return routine, padded

    def input_rows(self, bs: int):
        """Cached views of the static inputs' first bs rows: (all three [3, bs], tokens,
        positions, slots). Views of one buffer, so their addresses never change: a caller may
        write a batch into the first view and replay it (what step_packed copies into)."""
        v = self._row_views.get(bs)
        if v is None:
            v = self._row_views[bs] = (self._in[:, :bs], self._in[0, :bs], self._in[1, :bs],
                                       self._in[2, :bs])
        return v

    def _replay(self, bs: int, padded: int, routine: str):
        e = self.graphs[routine][padded]
        if padded > bs:
            self.counts["padded_rows"] += padded - bs
            # Rows [bs, dirty) hold an earlier, larger batch's inputs: point them back at the
            # scratch slot. Rows already holding padding need no copy (none in steady state).
            if self._dirty > bs:
                self._in[:, bs:self._dirty].copy_(self._pad[:, bs:self._dirty])
                self._dirty = bs
        self._dirty = max(self._dirty, bs)
        if self.debug:
            check_addresses(e, self._addresses(e.size))
        self.counts["replays"] += 1
        if routine == "full":
            self.counts["full_replays"] += 1
            for g in e.graphs:      # one graph, or two with split_launch
                g.replay()
        else:
            self.counts["piecewise_replays"] += 1
            replay_pieces(e, self.decoder, self._in[2, :padded], self._attn_out[:padded])
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

    def _fallback(self, bs: int, uniform: bool = True):
        self.counts["fallbacks"] += 1
        if (bs, uniform) not in self._warned:   # once per batch: the counts hold the rest
            self._warned.add((bs, uniform))
            why = (f"exceeds the largest captured size {self.dispatcher.max_size}"
                   if bs > self.dispatcher.max_size else
                   f"has no graph for a{' uniform decode' if uniform else ' mixed'} batch")
            warnings.warn(f"batch size {bs} {why}: running eagerly", RuntimeWarning,
                          stacklevel=3)

    def _addresses(self, size: int) -> tuple:
        """Addresses a replay reads or writes outside its pool: the static inputs, the piecewise
        attention output, and every layer's KV cache."""
        dec = self.decoder
        return tuple(t.data_ptr() for t in (*self._views(size), self._attn_out,
                                             *dec.k_cache, *dec.v_cache))

    def close(self):
        """Drop every graph and its pool; memory goes back to the device."""
        for entries in self.graphs.values():
            entries.clear()
        self.dispatcher = self._dispatcher()
        self._pool_ids = []
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
