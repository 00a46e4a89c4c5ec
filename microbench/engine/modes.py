"""The graph runner's modes and capture routines, with no torch import: the CLI lists them in
--help, where torch must not load.

A routine is one capture pass: "full" (one graph per size for the whole step) or "piecewise"
(graphs for the stretches between attention calls, attention eager). vLLM's default
`CUDAGraphMode.FULL_AND_PIECEWISE` (vllm/config/compilation.py) runs both: its mixed mode is
PIECEWISE (every batch that is not a uniform decode, every capture size) and its decode mode is
FULL (uniform decode batches, sizes up to max_num_seqs times the decode query length). Its
model runner (`GPUModelRunner.capture_model`) captures the mixed routine first, then the decode
routine, each with its own progress bar: ROUTINES keeps that order.
"""
from __future__ import annotations

MODES = ("none", "full", "piecewise", "full_and_piecewise")
POOLS = ("shared", "separate")
ORDERS = ("largest-first", "smallest-first")

# capture passes per mode, in capture order
ROUTINES = {"none": (), "full": ("full",), "piecewise": ("piecewise",),
            "full_and_piecewise": ("piecewise", "full")}
