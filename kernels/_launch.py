"""Launching a Triton kernel, and keeping the launch to replay with its arguments bound.

`kernel[grid](*args, **kw)` does, on every call, work that a decode step repeats needlessly: it
binds and specialises the arguments, computes the cache key, looks the compiled kernel up and
checks the kernel's globals. That is most of a Triton launch's host time. A decode step at one
batch size calls each kernel with the same tensors every time once its buffers are allocated
once, so that work can be done once.

Every wrapper in this package launches through `launch(record, kernel, grid, *args, **kw)`.
With `record=None` it is the plain JIT launch. With a list, the wrapper also appends a `Launch`:
a callable that enqueues the same kernel with the same arguments through the compiled kernel's
own launcher, `CompiledKernel[grid](*args)`, the path Triton offers for a kernel compiled ahead
of time (the same in Triton 3.6 and 3.9). The stream is looked up on each call, so a Launch
made inside `torch.cuda.graph` is captured on the capture stream.

Under the CPU interpreter there is no compiled kernel: a Launch then calls `kernel[grid](...)`
every time, so the same code runs, and is tested, on the CPU.
"""
from __future__ import annotations

import inspect


class Launch:
    """One Triton kernel launch with its grid, arguments and launch options fixed."""

    __slots__ = ("kernel", "grid", "args", "kwargs", "_run", "_values")

    def __init__(self, kernel, grid: tuple, args: tuple, kwargs: dict, compiled=None):
        self.kernel, self.grid, self.args, self.kwargs = kernel, tuple(grid), args, kwargs
        self._run, self._values = None, ()
        if hasattr(compiled, "result"):          # an asynchronous compile returns a future
            compiled = compiled.result()
        if compiled is not None and hasattr(compiled, "packed_metadata"):
            # the compiled launcher takes every parameter in signature order, constexprs too,
            # as the JIT passes them (its bound arguments with defaults applied)
            params = inspect.signature(kernel.fn).parameters
            bound = inspect.Signature(list(params.values())).bind(
                *args, **{k: v for k, v in kwargs.items() if k in params})
            bound.apply_defaults()
            self._values = tuple(bound.arguments.values())
            self._run = compiled[self.grid + (1,) * (3 - len(self.grid))]

    @property
    def direct(self) -> bool:
        """Whether calls go straight to the compiled kernel's launcher (False under the
        interpreter, where every call goes through the JIT)."""
        return self._run is not None

    def __call__(self):
        if self._run is None:
            self.kernel[self.grid](*self.args, **self.kwargs)
        else:
            self._run(*self._values)


def launch(record, kernel, grid, *args, **kwargs):
    """Launch `kernel[grid](*args, **kwargs)`; with a `record` list, append the bound Launch."""
    compiled = kernel[grid](*args, **kwargs)
    if record is not None:
        record.append(Launch(kernel, grid, args, kwargs, compiled))
