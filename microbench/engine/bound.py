"""A decode step bound once: the launches one step at a fixed batch size makes, replayed.

An engine's eager step pays, per kernel, what its launcher costs: argument checks, output
allocation and the launch's binding are done when the model is built, not in every step. The
toy decoder's wrappers check, allocate and bind on every call, which costs several times the
launch itself. `ToyDecoder.bind(bs)` records one step with every buffer allocated once and every
Triton launch bound (`microbench.kernels._launch`), and returns a `BoundStep`, which runs the
same kernels, in the same order, on the same buffers: an eager step at the launchers' own cost.
It is not a CUDA graph: each step still enqueues every kernel from the host, one at a time.
"""
from __future__ import annotations


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
