"""The dispatchers: the one record of which batch sizes have graphs, and which graph a batch
replays (PaddingDispatcher for one set of graphs, CudagraphDispatcher for two)."""
from __future__ import annotations

import bisect


class PaddingDispatcher:
    """Routes a batch of `bs` sequences to the smallest captured size >= bs.

    The size-to-padded table is computed once, here (as vLLM's CudagraphDispatcher does);
    `pad(bs)` returns None when bs exceeds the largest captured size, meaning: run eagerly.
    With `exact` (SGLang's `--disable-cuda-graph-padding`: its runner's `can_run` accepts a
    batch only when its size was captured) nothing is padded: a batch whose size was not
    captured runs eagerly.
    """

    def __init__(self, sizes, exact: bool = False):
        sizes = sorted(set(int(s) for s in sizes))
        if any(s < 1 for s in sizes):
            raise ValueError(f"captured sizes must be >= 1, got {sizes}")
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.max_size = sizes[-1] if sizes else 0
        self.exact = exact
        # table[bs] = padded size, for bs in 1..max_size; index 0 unused.
        self._table = [0] + [sizes[bisect.bisect_left(sizes, b)] for b in range(1, self.max_size + 1)]
        if exact:
            self._table = [b if p == b else None for b, p in enumerate(self._table)]

    def pad(self, bs: int) -> int | None:
        if bs < 1:
            raise ValueError(f"batch size must be >= 1, got {bs}")
        return self._table[bs] if bs <= self.max_size else None

    def padding(self, bs: int) -> int:
        """Rows of padding a batch of bs gets (0 when it runs eagerly)."""
        p = self.pad(bs)
        return 0 if p is None else p - bs

    def __contains__(self, size: int) -> bool:
        return size in self.sizes

    def __repr__(self) -> str:
        return f"PaddingDispatcher({list(self.sizes)}{', exact=True' if self.exact else ''})"


class CudagraphDispatcher:
    """Two sets of graphs, as vLLM's FULL_AND_PIECEWISE keeps them (vllm/v1/cudagraph_dispatcher.py,
    `CudagraphDispatcher.dispatch`): full graphs for uniform decode batches (every sequence adds
    one token), piecewise graphs for the rest (mixed prefill and decode).

    A batch of bs pads to the smallest size captured in either pass (vLLM pads its token count to
    the capture sizes before it dispatches); a uniform batch replays the full graph of that size
    where the full pass captured it, else the piecewise graph of that size, else runs eagerly; a
    batch that is not uniform never replays a full graph. The full pass may hold fewer sizes than
    the piecewise one: vLLM captures decode graphs only up to max_num_seqs.
    """

    def __init__(self, full=(), piecewise=()):
        self.full = PaddingDispatcher(full)
        self.piecewise = PaddingDispatcher(piecewise)
        self.ladder = PaddingDispatcher(set(self.full.sizes) | set(self.piecewise.sizes))
        self.sizes, self.max_size = self.ladder.sizes, self.ladder.max_size
        # (routine, padded) for bs in 1..max_size, uniform and not; index 0 unused
        self._uniform = [self._choose(b, True) for b in range(self.max_size + 1)]
        self._mixed = [self._choose(b, False) for b in range(self.max_size + 1)]

    def _choose(self, bs: int, uniform: bool) -> tuple[str, int | None]:
        padded = self.ladder.pad(bs) if bs else None
        if padded is None:
            return "eager", None
        if uniform and padded in self.full.sizes:
            return "full", padded
        if padded in self.piecewise.sizes:
            return "piecewise", padded
        return "eager", None

    def dispatch(self, bs: int, uniform: bool = True) -> tuple[str, int | None]:
        """("full" or "piecewise", the graph's size), or ("eager", None) when no graph fits."""
        if bs < 1:
            raise ValueError(f"batch size must be >= 1, got {bs}")
        if bs > self.max_size:
            return "eager", None
        return (self._uniform if uniform else self._mixed)[bs]

    def pad(self, bs: int, uniform: bool = True) -> int | None:
        return self.dispatch(bs, uniform)[1]

    def padding(self, bs: int, uniform: bool = True) -> int:
        p = self.pad(bs, uniform)
        return 0 if p is None else p - bs

    def __contains__(self, size: int) -> bool:
        return size in self.ladder

    def __repr__(self) -> str:
        return (f"CudagraphDispatcher(full={list(self.full.sizes)}, "
                f"piecewise={list(self.piecewise.sizes)})")
