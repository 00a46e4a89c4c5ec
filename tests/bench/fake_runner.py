"""A stand-in for GraphRunner on the CPU (graphs need CUDA): it routes each batch through a
PaddingDispatcher and counts replays, fallbacks and padded rows as the runner does, but runs
the decoder's own step at the real batch size, so its logits equal eager's exactly."""
from __future__ import annotations

from microbench.engine.dispatch import PaddingDispatcher


class FakeRunner:
    def __init__(self, decoder, sizes, mode="full", on_capture=None):
        self.decoder, self.sizes, self.mode = decoder, sorted(set(sizes)), mode
        self.dispatcher = PaddingDispatcher([])
        self.counts = dict(replays=0, eager_steps=0, fallbacks=0, padded_rows=0, real_rows=0)
        self.closed = False

    def capture(self) -> dict:
        self.dispatcher = PaddingDispatcher(self.sizes if self.mode != "none" else [])
        return dict(capture_s=0.0, pool_bytes=0, skipped=[],
                    sizes=[dict(size=s, warmup_s=0.0, capture_s=0.0, pool_bytes=0)
                           for s in self.dispatcher.sizes])

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
