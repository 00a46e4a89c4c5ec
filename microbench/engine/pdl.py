"""How a decoder's Triton kernels launch: with programmatic dependent launch (PDL) letting the
next kernel launch before a kernel's wait ("early"), after it ("late"), or without PDL ("off"),
chosen per device and model shape by measurement.

PDL overlaps each kernel's launch, and a matmul's first weight loads, with the tail of the
kernel before; but a kernel whose programs sit resident waiting holds SM slots that the running
kernel's later waves could use. Which wins depends on the model: in whole graphed bs-1 steps on
the H200 PDL made opt-125m and llama-1b faster and llama-8b slower (docs/bandwidth.md). So
`microbench tune --ab PRESET --vary pdl` times the three modes in whole steps, interleaved in
one process, and records the fastest in the device's table, `kernels/configs/pdl_<device>.json`,
keyed by the model's shape and element size. A decoder built with `pdl=None` takes the table's
choice for its shape, else DEFAULT. One choice per model: measured at one batch size and
context (those `tune --ab` was given, bs 1 and context 512 by default), it applies to all.
The readers and writers of these measured-choice tables are here too; the BLAS and attention
splits tables (engine/blas.py, engine/splits.py), one choice per measured batch size, use them.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from microbench import kernels
from microbench.engine.shapes import ModelShape
from microbench.kernels.gemv_configs import CONFIG_DIR, device_key

# a mode's name (as tables and runs record it) -> the `pdl` argument the kernel wrappers take
MODES = {"early": True, "late": "late", "off": False}
DEFAULT = "early"
# the names by kernels.pdl_mode's value (PDL_OFF, PDL_EARLY, PDL_LATE)
_NAMES = ("off", "early", "late")


def mode_name(pdl) -> str:
    """The name of a wrapper's `pdl` argument (True, "early", "late" or False; anything else
    raises ValueError)."""
    return _NAMES[kernels.pdl_mode(pdl)]


def table_path(device_name: str, directory: Path | None = None) -> Path:
    return Path(directory or CONFIG_DIR) / f"pdl_{device_key(device_name)}.json"


def shape_key(shape: ModelShape, elt: int) -> str:
    """A table entry's key: the model's shape and the element size in bytes."""
    s = shape
    return (f"layers={s.n_layers},hidden={s.hidden},heads={s.n_heads},kv_heads={s.n_kv_heads},"
            f"head_dim={s.head_dim},ffn={s.ffn},vocab={s.vocab},elt={elt}")


def read_choices(path: Path, name: str, vary: str, modes, entries) -> dict:
    """A measured-choice table's `choices` ({} when the file is absent), as `microbench tune
    --ab P --vary <vary>` writes them: `entries(choices)` yields (label, entry) pairs whose
    "mode" must be among `modes`. A file that is not such a table raises a one-line ValueError
    naming it."""
    if not path.exists():
        return {}
    try:
        choices = json.loads(path.read_text()).get("choices", {})
        bad = [label for label, e in entries(choices) if e.get("mode") not in modes]
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{name} table {path} is not a table `microbench tune --ab P --vary "
                         f"{vary}` writes: {e}") from None
    if bad:
        raise ValueError(f"{name} table {path}: entry {bad[0]} has no mode among "
                         f"{', '.join(modes)}")
    return choices


@functools.lru_cache(maxsize=None)
def load_table(device_name: str) -> dict:
    """The measured choices for a device ({} when none was measured there)."""
    return read_choices(table_path(device_name), "PDL", "pdl", MODES, lambda c: c.items())


def choose(shape: ModelShape, elt: int, device_name: str) -> str:
    """The mode a decoder of `shape` launches its kernels with on `device_name`: the table's
    measured choice, else DEFAULT."""
    entry = load_table(device_name).get(shape_key(shape, elt))
    return entry["mode"] if entry else DEFAULT


def resolve(pdl, shape: ModelShape, dtype: torch.dtype, device: torch.device):
    """The `pdl` argument a decoder passes its kernels: `pdl` as given (True, "early", "late" or
    False; anything else raises), or for None the mode measured for `shape` on a CUDA `device`
    (early elsewhere: nothing launches with PDL off CUDA)."""
    if pdl is None:
        pdl = True
        if device.type == "cuda":
            elt = torch.empty((), dtype=dtype).element_size()
            pdl = MODES[choose(shape, elt, torch.cuda.get_device_name(device))]
    kernels.pdl_mode(pdl)
    return pdl


def read_per_batch(path: Path, name: str, vary: str, modes, unit: str) -> dict:
    """read_choices for a table holding, per model shape, one choice per measured batch size
    (the BLAS and attention splits tables); `unit` names the batch in a bad entry's label."""
    return read_choices(path, name, vary, modes,
                        lambda c: ((f"{k} {unit} {b}", e) for k, es in c.items() for b, e in es.items()))


def _open_table(path: Path, meta: dict) -> dict:
    """The table at `path` (or a new one) with `meta` (the measuring run: device, command,
    versions, revision) appended to its runs."""
    table = json.loads(path.read_text()) if path.exists() else {"device": meta.get("device"),
                                                                 "runs": [], "choices": {}}
    table["runs"].append(meta)
    return table


def merge_table(path: Path, meta: dict, key: str, entry: dict) -> dict:
    """The table at `path` (or a new one) with `key`'s entry set to `entry` and `meta` appended
    to its runs."""
    table = _open_table(path, meta)
    table["choices"][key] = dict(entry, run=len(table["runs"]) - 1)
    return table


def merge_per_batch(path: Path, meta: dict, key: str, entries: dict) -> dict:
    """A per-batch table at `path` (or a new one) with `key`'s entries set at the batch sizes of
    `entries` ({batch: entry}), others kept, and `meta` appended to its runs."""
    table = _open_table(path, meta)
    mine = table["choices"].setdefault(key, {})
    for batch, entry in entries.items():
        mine[str(batch)] = dict(entry, run=len(table["runs"]) - 1)
    return table
