"""microbench: CUDA-graph micro-benchmarks for LLM decoding, from first principles.

The public names are importable from here; they load on first use, so that `microbench --help`
and the commands that need no GPU do not import torch.
"""
from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "ModelShape": "microbench.engine.shapes",
    "PRESETS": "microbench.engine.shapes",
    "ToyDecoder": "microbench.engine.decoder",
    "GraphRunner": "microbench.engine.runner",
    "PaddingDispatcher": "microbench.engine.dispatch",
    "vllm_capture_sizes": "microbench.engine.ladders",
    "sglang_capture_sizes": "microbench.engine.ladders",
    "pow2_capture_sizes": "microbench.engine.ladders",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'microbench' has no attribute {name!r}")
