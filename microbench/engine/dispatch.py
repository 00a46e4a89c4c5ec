"""The padding dispatcher: the one record of which batch sizes have graphs."""
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
