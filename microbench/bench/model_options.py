"""The model options every command that builds the toy decoder takes (--preset, --context,
--dtype), validated in one place for the sweep's, start-up's and reproduce's configs. Imports no
torch: `microbench startup`'s parent process validates its config without it."""
from __future__ import annotations

from microbench.engine.shapes import DTYPE_NAMES, MAX_CONTEXT, PRESETS


def check_model_options(preset: str, context: int, dtype: str) -> None:
    """ValueError('--option: what was wrong; what is allowed') for the first of preset,
    context and dtype that is not one the decoder can be built with."""
    if preset not in PRESETS:
        raise ValueError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not 1 <= context <= MAX_CONTEXT:
        raise ValueError(f"--context: {context} is out of range; 1..{MAX_CONTEXT}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype: {dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")
