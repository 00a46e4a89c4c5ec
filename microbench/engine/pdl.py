"""How a decoder's Triton kernels launch: with programmatic dependent launch (PDL) letting the
next kernel launch before a kernel's wait ("early"), after it ("late"), or without PDL ("off"),
chosen per device, model shape and batch size by measurement.

PDL overlaps each kernel's launch, and a matmul's first weight loads, with the tail of the
kernel before; but a kernel whose programs sit resident waiting holds SM slots that the running
kernel's later waves could use. Which wins depends on the model and the batch: in whole graphed
steps on the H200 opt-125m was fastest early at one row and late at 2, 4 and 16 rows
(docs/bandwidth.md).
So `microbench tune --ab PRESET --vary pdl --rows 1,4,16` times the three modes in whole steps,
interleaved in one process, and records at each batch size the fastest beyond noise in the
device's table, `kernels/configs/pdl_<device>.json`, keyed by the model's shape and element size.
A decoder built with `pdl=None` follows the table where it measured: a measured batch size takes
its own choice, a size between two neighbouring measured ones that chose alike takes theirs, and
every other size (below the smallest, above the largest, between two that differ) takes DEFAULT,
as on a shape or device the table does not hold.
The readers and writers of these measured-choice tables are here too; the BLAS and attention
splits tables (engine/blas.py, engine/splits.py), also one choice per measured batch size, use
them.
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
    """The measured choices for a device ({} when none was measured there): per model shape,
    per measured batch size."""
    # a table written with one entry per shape is read as one per batch (per_batch)
    return read_per_batch(table_path(device_name), "PDL", "pdl", MODES, "bs",
                          lambda c: per_batch(dict(choices=c))["choices"])


def per_batch(table: dict) -> dict:
    """`table` with each entry written one per shape (before the PDL mode was chosen per batch
    size: the entry itself, measured at its "bs") moved under that batch size."""
    return dict(table, choices={k: {str(e.get("bs", 1)): e} if "mode" in e else e
                                for k, e in table.get("choices", {}).items()})


def measured(shape: ModelShape, elt: int, device_name: str) -> tuple:
    """((batch, mode), ...) in batch order: the choices the table holds for `shape`."""
    entries = load_table(device_name).get(shape_key(shape, elt), {})
    return tuple(sorted((int(b), e["mode"]) for b, e in entries.items()))


def choose(batch: int, choices: tuple) -> str:
    """The mode at `batch` given measured()'s choices: a measured batch size's own; between two
    neighbouring measured sizes that chose alike, theirs; DEFAULT elsewhere."""
    for (lo, lo_mode), (hi, hi_mode) in zip(choices, choices[1:]):
        if lo < batch < hi and lo_mode == hi_mode:
            return lo_mode
    return next((mode for b, mode in choices if b == batch), DEFAULT)


def resolve(pdl, shape: ModelShape, dtype: torch.dtype, device: torch.device):
    """`batch -> the pdl argument` a decoder passes its kernels at that batch size: `pdl` at
    every size when given (True, "early", "late" or False; anything else raises), a callable
    `pdl` as it is (a TP shard takes its full model's), or for None the modes measured for
    `shape` on a CUDA `device` (early elsewhere: nothing launches with PDL off CUDA)."""
    if callable(pdl):
        return pdl
    if pdl is not None:
        kernels.pdl_mode(pdl)
        return lambda batch: pdl
    if device.type != "cuda":
        return lambda batch: True
    elt = torch.empty((), dtype=dtype).element_size()
    choices = measured(shape, elt, torch.cuda.get_device_name(device))
    # worked out once (every kernel call asks): above the largest measured size, DEFAULT
    top = max((b for b, _ in choices), default=0)
    at = tuple(MODES[choose(b, choices)] for b in range(top + 1))
    default = MODES[DEFAULT]
    return lambda batch: at[batch] if batch <= top else default


def modes_at(pdl_at, sizes, launches=lambda arg: arg is not False) -> dict:
    """{mode name: [batch sizes]} of `pdl_at` (resolve's result) over `sizes`; a size whose
    kernels do not launch with PDL (`launches(arg)` false: off, or a GPU without PDL) is "off"."""
    out: dict = {}
    for b in sorted(sizes):
        arg = pdl_at(b)
        out.setdefault(mode_name(arg) if launches(arg) else "off", []).append(b)
    return out


def read_per_batch(path: Path, name: str, vary: str, modes, unit: str,
                   as_read=lambda c: c) -> dict:
    """read_choices for a table holding, per model shape, one choice per measured batch size
    (the PDL, BLAS and attention splits tables), its choices as `as_read` gives them; `unit`
    names the batch in a bad entry's label."""
    entries = lambda c: ((f"{k} {unit} {b}", e)
                         for k, es in as_read(c).items() for b, e in es.items())
    return as_read(read_choices(path, name, vary, modes, entries))


def _open_table(path: Path, meta: dict) -> dict:
    """The table at `path` (or a new one) with `meta` (the measuring run: device, command,
    versions, revision) appended to its runs."""
    table = json.loads(path.read_text()) if path.exists() else {"device": meta.get("device"),
                                                                 "runs": [], "choices": {}}
    table["runs"].append(meta)
    return table


def merge_per_batch(path: Path, meta: dict, key: str, entries: dict) -> dict:
    """A per-batch table at `path` (or a new one) with `key`'s entries set at the batch sizes of
    `entries` ({batch: entry}), others kept, and `meta` appended to its runs."""
    table = per_batch(_open_table(path, meta))
    mine = table["choices"].setdefault(key, {})
    for batch, entry in entries.items():
        mine[str(batch)] = dict(entry, run=len(table["runs"]) - 1)
    return table
