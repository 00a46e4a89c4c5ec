"""How the attention launches at a batch size, chosen per device, model shape and batch size by
measurement: how the fused attention kernel splits a sequence's KV cache, or the attention as
separate kernels.

Below the batch at which its (sequence, kv head) programs fill the GPU, rope_store_attention
splits each sequence's KV cache so every SM gets about two programs. Four ways of launching the
attention at a batch size:

* "fill" (the default, decode_attention's rule) rounds the tiles per split down, so it may
  launch more, shorter splits than that;
* "capped" rounds them up (kernels/rope_store_attention.py, capped_splits): fewer splits;
* "half-tile" keeps fill's rule over K/V tiles of half as many keys (half_tile): more tiles, so
  more and shorter splits, each loading a smaller first tile before its PDL wait;
* "separate" runs that batch size's step in the Fusion.MATMULS plan (`ToyDecoder.fusion_at`):
  RoPE and the KV store in one kernel (rope_store_kv), then decode_attention (with its reduce
  when it splits), the embedding as an index gather with seq_lens on the side. At large batch
  decode_attention streams the cache faster than the fused kernel does, and its extra kernels
  cost little beside it.

More splits hide latency at small batch and cost a merge of more partials; which is faster
depends on the shape and the batch, with no rule that holds across models. So `microbench tune
--ab PRESET --vary splits` times whole graph steps of the four (by default at every size the
default sweep captures), interleaved in one process, and records at each batch size the fastest
beyond noise in the device's table, `kernels/configs/splits_<device>.json`, keyed by the model's shape and element
size (`pdl.shape_key`), with what each mode launched there (`split_launches`: the split counts and,
under `keys`, the keys per tile, separate's those of decode_attention; a mode that launches as
fill does is never kept over fill), and the context it ran at. Both depend on the cache length
(the A/B's decoders have the sweep's for that context, `shapes.max_seq_for`), so a decoder built
with `splits=None` takes a measured mode at exactly the measured batch sizes that chose it,
where its own cache is the one measured and launches that mode and fill as they were compared
(`_holds`), and "fill" everywhere else (`DEFAULT`); a graph captured at a batch size and the
eager step at that size launch alike. (Entries measured before the half-tile mode existed
record the split counts of fill and capped only.)
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from microbench.engine.pdl import read_per_batch, shape_key
from microbench.engine.shapes import max_seq_for
from microbench.kernels.gemv_configs import CONFIG_DIR, device_key

MODES = ("fill", "capped", "half-tile", "separate")
SEPARATE = "separate"   # the mode whose step runs the attention as separate kernels
DEFAULT = "fill"


def table_path(device_name: str, directory: Path | None = None) -> Path:
    return Path(directory or CONFIG_DIR) / f"splits_{device_key(device_name)}.json"


@functools.lru_cache(maxsize=None)
def load_table(device_name: str) -> dict:
    """The measured choices for a device ({} when none was measured there): per model shape,
    per measured batch size."""
    return read_per_batch(table_path(device_name), "attention splits", "splits", MODES, "bs")


def block_n(mode: str, shape, device, dtype: torch.dtype) -> int | None:
    """The keys per K/V tile a launch in `mode` asks rope_store_attention for (None: the
    kernel's own, block_n_for's)."""
    from microbench.kernels.rope_store_attention import half_tile
    return half_tile(torch.device(device), shape.head_dim, dtype) if mode == "half-tile" else None


def split_launches(shape, batch: int, max_seq: int, device, dtype: torch.dtype) -> dict:
    """What the attention launches for `shape` at `batch` over a cache of `max_seq` positions on
    `device` in each mode: {"fill": splits, "capped": splits, "half-tile": splits, "separate":
    decode_attention's splits, "keys": {mode: keys per tile}}."""
    from microbench.kernels.decode_attention import block_n_for, num_splits_for
    from microbench.kernels.rope_store_attention import fused_plan
    device = torch.device(device)
    keys = {mode: block_n(mode, shape, device, dtype) or block_n_for(device, shape.head_dim, dtype)
            for mode in MODES}
    counts = {mode: fused_plan(batch, shape.n_kv_heads, max_seq, device, shape.head_dim, dtype,
                               capped=mode == "capped", block_n=keys[mode])[0]
              for mode in MODES if mode != SEPARATE}
    counts[SEPARATE] = num_splits_for(batch, shape.n_kv_heads, max_seq, device, shape.head_dim,
                                      dtype)
    return dict(counts, keys=keys)


def launches_alike(launches: dict, mode: str) -> bool:
    """Whether `mode` launches as fill does in split_launches's `launches` (separate never
    does: its kernels are others)."""
    return (mode != SEPARATE and launches[mode] == launches["fill"]
            and launches["keys"][mode] == launches["keys"]["fill"])


def _holds(entry: dict, launches: dict, max_seq: int) -> bool:
    """Whether a table entry applies to a decoder whose cache holds `max_seq` positions and
    launches `launches` (split_launches) at the entry's batch size. The entry timed its mode
    against fill over the cache a sweep at its `context` gets (max_seq_for), so the cache must be
    that one; and fill and its own mode must launch as it recorded them (its "splits": counts per
    mode, fill's and its own among them, and keys per tile, which a half-tile entry must record
    and which, when recorded, must name both), whatever the other modes would launch there."""
    context = entry.get("context")
    if type(context) is not int or max_seq_for(context) != max_seq:
        return False
    recorded = entry.get("splits")
    if not isinstance(recorded, dict) or not {"fill", entry["mode"]} <= recorded.keys():
        return False
    keys = recorded.get("keys", {})
    pair = ("fill", entry["mode"])
    if not isinstance(keys, dict) or (entry["mode"] == "half-tile" and not keys) \
            or (keys and not set(pair) <= keys.keys()):
        return False
    return (all(launches.get(m) == recorded[m] for m in pair)
            and all(launches["keys"].get(m) == keys[m] for m in pair if keys))


def measured_modes(shape, elt: int, device_name: str, launches, max_seq: int) -> dict:
    """{batch: mode} for the batch sizes at which `shape` on `device_name` measured a mode other
    than fill faster, where a decoder whose cache holds `max_seq` positions and launches
    `launches(batch)` (its split_launches) runs what was compared (_holds)."""
    entries = load_table(device_name).get(shape_key(shape, elt), {})
    return {int(b): e["mode"] for b, e in entries.items()
            if e["mode"] != DEFAULT and _holds(e, launches(int(b)), max_seq)}


def resolve(splits: str | None, shape, dtype: torch.dtype, device: torch.device, max_seq: int):
    """`batch -> mode` for a decoder whose cache holds `max_seq` positions: `splits` at every
    batch size when given (one of MODES; anything else raises), else the table's choices on a
    CUDA `device`, read once here (DEFAULT elsewhere)."""
    if splits is not None:
        if splits not in MODES:
            raise ValueError(f"splits must be one of {', '.join(MODES)} or None, got {splits!r}")
        return lambda batch: splits
    if device.type != "cuda":
        return lambda batch: DEFAULT
    elt = torch.empty((), dtype=dtype).element_size()
    modes = measured_modes(shape, elt, torch.cuda.get_device_name(device),
                           lambda b: split_launches(shape, b, max_seq, device, dtype), max_seq)
    return lambda batch: modes.get(batch, DEFAULT)
