"""A stand-in for GraphRunner on the CPU (graphs need CUDA): it routes each batch as the runner
does (a PaddingDispatcher, or under full_and_piecewise a CudagraphDispatcher over a full pass
capped at full_max_size and a piecewise pass of every size) and counts replays, fallbacks and
padded rows as the runner does, but runs the decoder's own step at the real batch size, so its
logits equal eager's exactly."""
from __future__ import annotations

from microbench.engine.dispatch import CudagraphDispatcher, PaddingDispatcher


class FakeRunner:
    def __init__(self, decoder, sizes, mode="full", on_capture=None, full_max_size=None):
        self.decoder, self.sizes, self.mode = decoder, sorted(set(sizes)), mode
        self.full_max_size = full_max_size
        self.dispatcher = PaddingDispatcher([])
        self.counts = dict(replays=0, eager_steps=0, fallbacks=0, padded_rows=0, real_rows=0)
        self.closed = False

    def capture(self) -> dict:
        sizes = self.sizes if self.mode != "none" else []
        if self.mode == "full_and_piecewise":
            cap = self.full_max_size or max(sizes, default=0)
            self.dispatcher = CudagraphDispatcher([s for s in sizes if s <= cap], sizes)
        else:
            self.dispatcher = PaddingDispatcher(sizes)
        return dict(capture_s=0.0, pool_bytes=0, skipped=[],
                    sizes=[dict(size=s, warmup_s=0.0, capture_s=0.0, pool_bytes=0)
                           for s in self.dispatcher.sizes])

    def route(self, bs: int, uniform: bool = True) -> tuple[str, int | None]:
        """GraphRunner.route: ("full" or "piecewise", the graph's size), or ("eager", None)."""
        if self.mode == "full_and_piecewise":
            return self.dispatcher.dispatch(bs, uniform)
        padded = self.dispatcher.pad(bs) if self.mode != "none" else None
        return (self.mode, padded) if padded is not None else ("eager", None)

    def step_packed(self, x):
        bs = x.shape[1]
        padded = self.dispatcher.pad(bs)
        self.counts["real_rows"] += bs
        if padded is None:
            self.counts["eager_steps"] += 1
            self.counts["fallbacks"] += self.mode != "none"
        else:
            self.counts["replays"] += 1
            self.counts["padded_rows"] += padded - bs
        return self.decoder.step(x[0], x[1], x[2])

    def close(self):
        self.closed = True
