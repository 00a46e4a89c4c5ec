"""The model options every command that builds the toy decoder takes (--preset, --context,
--dtype), validated in one place for the sweep's, start-up's and reproduce's configs, and the
full_and_piecewise cap the sweep and generate take. Imports no
torch: `microbench startup`'s parent process validates its config without it."""
from __future__ import annotations

from microbench.engine.shapes import DTYPE_NAMES, MAX_BATCH, MAX_CONTEXT, PRESETS


def check_model_options(preset: str, context: int, dtype: str) -> None:
    """ValueError('--option: what was wrong; what is allowed') for the first of preset,
    context and dtype that is not one the decoder can be built with."""
    if preset not in PRESETS:
        raise ValueError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not 1 <= context <= MAX_CONTEXT:
        raise ValueError(f"--context: {context} is out of range; 1..{MAX_CONTEXT}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype: {dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")


def check_full_max_size(mode: str, full_max_size) -> None:
    """ValueError for a --full-max-size (full_and_piecewise's cap on its full pass) given with
    another mode or outside 1..MAX_BATCH; None passes."""
    if full_max_size is None:
        return
    if mode != "full_and_piecewise":
        raise ValueError(f"--full-max-size: only with --mode full_and_piecewise, got --mode {mode}")
    if isinstance(full_max_size, bool) or not isinstance(full_max_size, int) \
            or not 1 <= full_max_size <= MAX_BATCH:
        raise ValueError(f"--full-max-size: {full_max_size!r} is out of range; 1..{MAX_BATCH}")


def check_batch_sizes(bs) -> None:
    """Raise ValueError('--bs: ...') unless bs is one or more distinct ints in 1..MAX_BATCH."""
    if not bs:
        raise ValueError("--bs: give at least one batch size")
    if len(set(bs)) != len(bs):
        raise ValueError(f"--bs: batch sizes must be distinct, got {','.join(map(str, bs))}")
    for b in bs:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH:
            raise ValueError(f"--bs: {b!r} is out of range; batch sizes are 1..{MAX_BATCH}")
