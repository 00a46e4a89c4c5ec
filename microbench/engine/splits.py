"""How many KV splits the fused attention kernel takes at a batch size, chosen per device, model
shape and batch size by measurement.

Below the batch at which its (sequence, kv head) programs fill the GPU, rope_store_attention
splits each sequence's KV cache so every SM gets about two programs. The count it takes by
default ("fill", decode_attention's rule) rounds the tiles per split down, so it may launch
more, shorter splits than that ("capped" rounds them up: kernels/rope_store_attention.py,
capped_splits). More splits hide latency at small batch and cost a merge of more partials;
which is faster depends on the shape and the batch, with no rule that holds across models. So
`microbench tune --ab PRESET --vary splits --rows 8,16,32` times whole graph steps of the two,
interleaved in one process, and records at each batch size the faster beyond noise in the
device's table, `kernels/configs/splits_<device>.json`, keyed by the model's shape and element
size (`pdl.shape_key`), with the two split counts it compared (`split_pair`; a batch size
whose two counts are equal records "fill"). The counts depend on the cache length, so a
decoder built with `splits=None` takes "capped" at exactly the measured batch sizes that chose
it and where its own cache gives the same two counts, and "fill" everywhere else (`DEFAULT`);
a graph captured at a batch size and the eager step at that size launch alike.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from microbench.engine.pdl import read_per_batch, shape_key
from microbench.kernels.gemv_configs import CONFIG_DIR, device_key

MODES = ("fill", "capped")
DEFAULT = "fill"


def table_path(device_name: str, directory: Path | None = None) -> Path:
    return Path(directory or CONFIG_DIR) / f"splits_{device_key(device_name)}.json"


@functools.lru_cache(maxsize=None)
def load_table(device_name: str) -> dict:
    """The measured choices for a device ({} when none was measured there): per model shape,
    per measured batch size."""
    return read_per_batch(table_path(device_name), "attention splits", "splits", MODES, "bs")


def split_pair(shape, batch: int, max_seq: int, device, dtype: torch.dtype) -> dict:
    """The fused attention's split counts for `shape` at `batch` over a cache of `max_seq`
    positions on `device`: {"fill": the default's, "capped": the capped rule's}."""
    from microbench.kernels.rope_store_attention import fused_plan
    return {mode: fused_plan(batch, shape.n_kv_heads, max_seq, device, shape.head_dim, dtype,
                             capped=mode == "capped")[0] for mode in MODES}


def capped_sizes(shape, elt: int, device_name: str, pair) -> frozenset:
    """The batch sizes at which `shape` on `device_name` measured "capped" faster, and where
    `pair(batch)` (the caller's split_pair) gives the two counts that were compared."""
    entries = load_table(device_name).get(shape_key(shape, elt), {})
    return frozenset(int(b) for b, e in entries.items()
                     if e["mode"] == "capped" and e.get("splits") == pair(int(b)))


def resolve(splits: str | None, shape, dtype: torch.dtype, device: torch.device, max_seq: int):
    """`batch -> capped?` for a decoder whose cache holds `max_seq` positions: `splits` at every
    batch size when given (one of MODES; anything else raises), else the table's choices on a
    CUDA `device`, read once here (DEFAULT elsewhere)."""
    if splits is not None:
        if splits not in MODES:
            raise ValueError(f"splits must be one of {', '.join(MODES)} or None, got {splits!r}")
        capped = splits == "capped"
        return lambda batch: capped
    if device.type != "cuda":
        return lambda batch: False
    elt = torch.empty((), dtype=dtype).element_size()
    sizes = capped_sizes(shape, elt, torch.cuda.get_device_name(device),
                         lambda b: split_pair(shape, b, max_seq, device, dtype))
    return lambda batch: batch in sizes
