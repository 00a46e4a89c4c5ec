"""A decode step bound once: the launches one step at a fixed batch size makes, replayed.

An engine's eager step pays, per kernel, what its launcher costs: argument checks, output
allocation and the launch's binding are done when the model is built, not in every step. The
toy decoder's wrappers check, allocate and bind on every call, which costs several times the
launch itself. `ToyDecoder.bind(bs)` records one step with every buffer allocated once and every
Triton launch bound (`microbench.kernels._launch`), and returns a `BoundStep`, which runs the
same kernels, in the same order, on the same buffers: an eager step at the launchers' own cost.
It is not a CUDA graph: each step still enqueues every kernel from the host, one at a time.
`Binding` holds the decoder's binding methods (ToyDecoder inherits them): whole steps, and the
attention calls a piecewise replay makes between its graphs.
"""
from __future__ import annotations

import torch


class BoundStep:
    """One decode step at batch size `bs` as bound launches.

    inputs: [3, bs] int64 (tokens; positions; slots), the buffer every launch reads;
    launches: callables, in launch order, each enqueueing one kernel;
    output: the logits [bs, vocab], rewritten by every step."""

    def __init__(self, inputs, launches, output):
        self.inputs, self.launches, self.output = inputs, tuple(launches), output

    @property
    def bs(self) -> int:
        return self.inputs.shape[1]

    def __len__(self) -> int:
        """Kernels one step launches."""
        return len(self.launches)

    def run(self):
        """Enqueue the step's kernels on the inputs already in place; returns the logits."""
        for fn in self.launches:
            fn()
        return self.output

    def step_packed(self, packed):
        """One step on `packed` ([3, bs] tokens; positions; slots): one copy in, then run()."""
        self.inputs.copy_(packed)
        return self.run()

    def step(self, tokens, positions, slots):
        """One step on separate input tensors (three copies in)."""
        for row, t in zip(self.inputs, (tokens, positions, slots)):
            row.copy_(t)
        return self.run()


class Binding:
    """ToyDecoder's binding methods. They use the decoder's backend, max_batch, device,
    scratch_slot, step and attention, and its `_rec`: the keyword arguments every kernel
    wrapper the decoder calls takes ({} launches plainly; {"record": list} also appends the
    bound launch to the list)."""

    def bind(self, bs: int) -> BoundStep:
        """The step at batch bs as bound launches (engine.bound.BoundStep): argument checks,
        output buffers and each launch's binding done once, by recording one step on static
        inputs at the scratch slot (no sequence's cache changes). Triton backend; a tensor-
        parallel shard's all-reduces are recorded in place too, so every rank must bind the same
        batch size at the same time (binding runs one step)."""
        if self.backend != "triton":
            raise ValueError("bind: bound steps run the triton backend only")
        if not 1 <= bs <= self.max_batch:
            raise ValueError(f"bind: batch size {bs} is outside 1..{self.max_batch}")
        inputs = torch.zeros(3, bs, dtype=torch.long, device=self.device)  # tokens; positions; slots
        inputs[2] = self.scratch_slot
        record: list = []
        logits = self._recording(record, self.step, *inputs)
        return BoundStep(inputs, record, logits)

    def bind_attention(self, l: int, q, slots, seq_lens, out) -> list | None:
        """Run layer l's attention once into `out` and return its launches bound, to replay on
        the same tensors (the piecewise graphs' eager attention); None on the torch backend,
        whose calls are not bound."""
        if self.backend != "triton":
            self.attention(l, q, slots, seq_lens, out=out)
            return None
        record: list = []
        self._recording(record, self.attention, l, q, slots, seq_lens, out=out)
        return record

    def _recording(self, record: list, fn, *args, **kw):
        """fn(*args, **kw) with every kernel wrapper appending its bound launch to `record`."""
        self._rec = {"record": record}
        try:
            return fn(*args, **kw)
        finally:
            self._rec = {}
