"""Launch configurations of the skinny matmuls (kernels.gemv), per weight shape, row bucket and
device: measured ones from a tuned table, else a rule.

A tuned table is a JSON file `configs/gemv_<device>.json` beside this module, written by
`microbench tune` on that device (it records the command, versions and revision that produced
it, and each winner's time against cuBLAS's). Its entries are keyed by the weight's shape, the
fused prologue/epilogue and the element size, then by row bucket: rows are rounded up to a power
of two (1, 2, 4, 8, 16), and every row count in a bucket launches with the bucket's config, so a
row's result does not depend on how many rows share the launch (the padded batch of a graph and
the eager batch it stands for sum their products in one order). Shapes or devices the table does
not hold take `rule_config`, the rule the table was first seeded from.

The keys of a config: BLOCK_N output features per program; BLOCK_K weight columns per chunk;
STAGES chunks the compiler keeps in flight (tensor-core path); num_warps; AHEAD (CUDA-core path:
the next chunk's loads issued before this chunk is multiplied); DOT (1: the chunk's product on
tensor cores with the rows padded to 16 as its M side, 2: the same with the weight rows as the
M side and the rows as N, gemv_mma.py; 0: on CUDA cores, every row against every weight);
DEFER (CUDA-core path, 0: each chunk's products summed across the program as it comes; n >= 1:
per-thread partial sums kept over the whole row and summed once at the end, the chunk loop
unrolled n times); SPLIT (DOT=2 only: K cut into SPLIT ranges, one program each, their partial
sums added in split order by the last to finish). A key an entry lacks (tuned before the key
existed) reads as in DEFAULTS.
"""
from __future__ import annotations

import contextlib
import functools
import json
import re
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
LAUNCH_KEYS = ("BLOCK_N", "BLOCK_K", "STAGES", "num_warps", "AHEAD", "DOT", "DEFER", "SPLIT")
# what a key a table entry lacks (one tuned before the key existed) reads as
DEFAULTS = dict(AHEAD=0, DOT=0, DEFER=0, SPLIT=1)
ROW_BUCKETS = (1, 2, 4, 8, 16)

# Under the interpreter every program costs milliseconds of numpy: few, large ones (the kernel
# tests pass smaller ones through `config=` to cover many programs and chunks on small shapes).
INTERPRETED = dict(BLOCK_N=128, BLOCK_K=512, STAGES=1, num_warps=4, AHEAD=0, DOT=0, DEFER=0,
                   SPLIT=1)


def row_bucket(rows: int) -> int:
    """The power of two at or above `rows`: the rows a config is chosen for."""
    return 1 << (max(1, rows) - 1).bit_length()


def device_key(name: str) -> str:
    """A device name as a file-name part: 'NVIDIA H200' -> 'NVIDIA_H200'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def shape_key(n_rows_w: int, k: int, norm: bool, epi: int, elt: int) -> str:
    """A table entry's key: the weight's [rows, K], the fusion (norm prologue; epilogue 0 none,
    1 residual, 2 swiglu) and the element size in bytes."""
    return f"N={n_rows_w},K={k},norm={int(bool(norm))},epi={int(epi)},elt={elt}"


def table_path(device_name: str, directory: Path | None = None) -> Path:
    return Path(directory or CONFIG_DIR) / f"gemv_{device_key(device_name)}.json"


_TABLES = {"on": True, "file": None}


@contextlib.contextmanager
def tables_off():
    """Within the block the wrappers ignore every tuned table and take the rule (what
    `microbench tune --ab` binds its rule arm under)."""
    before = _TABLES["on"]
    _TABLES["on"] = False
    try:
        yield
    finally:
        _TABLES["on"] = before


@contextlib.contextmanager
def table_from(path):
    """Within the block the wrappers read the tuned entries of the table at `path` instead of
    the device's (what `microbench tune --ab --vary previous-table` binds its second arm under:
    a table before a re-tune against the re-tuned one)."""
    before = _TABLES["file"]
    _TABLES["file"] = str(path)
    _load_file.cache_clear()    # read as it is now, not as an earlier block read it
    try:
        yield
    finally:
        _TABLES["file"] = before


@functools.lru_cache(maxsize=None)
def _load_file(path: str) -> dict:
    return json.loads(Path(path).read_text()).get("configs", {})


@functools.lru_cache(maxsize=None)
def load_table(device_name: str) -> dict:
    """The tuned entries for a device ({} when no table was tuned there)."""
    path = table_path(device_name)
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("configs", {})


def rule_config(n_rows_w: int, k: int, rows: int, elt: int) -> dict:
    """The untuned rule. At one row, CUDA cores: one or two 16-byte loads per thread per row of
    the tile, every thread along K (BLOCK_K = (16 / elt) · 32 · num_warps, or twice that), and
    longer rows in chunks of twice that, one chunk ahead. Above one row a CUDA-core tile holds
    every row times every weight column in registers, so the product goes on tensor cores with
    the weight as the wide side (DOT=2), K split in two, four or eight while the column blocks
    number fewer than 128 (so that most SMs get a program) and each split keeps two chunks."""
    if rows > 1:
        # 16-bit weights: 256-wide chunks; fp32 ones 64-wide, so three stages of a SwiGLU
        # tile's gate and up rows fit in shared memory
        bk = 256 if k >= 512 and elt <= 2 else 64
        blocks, split = -(-n_rows_w // 64), 1
        while split < 8 and blocks * split < 128 and k >= 4 * split * bk:
            split *= 2
        return dict(BLOCK_N=64, BLOCK_K=bk, STAGES=3, num_warps=4, AHEAD=0, DOT=2, DEFER=0,
                    SPLIT=split)
    warps = 4
    vec = 16 // elt * 32 * warps
    one = dict(STAGES=3, num_warps=warps, DOT=0, DEFER=0, SPLIT=1)
    if k <= vec:
        return dict(BLOCK_N=4, BLOCK_K=vec, AHEAD=0, **one)
    if k <= 2 * vec:
        return dict(BLOCK_N=4, BLOCK_K=2 * vec, AHEAD=0, **one)
    return dict(BLOCK_N=2, BLOCK_K=2 * vec, AHEAD=1, **one)


def choose_config(n_rows_w: int, k: int, rows: int, elt: int, norm: bool = False, epi: int = 0,
                  device_name: str | None = None) -> dict:
    """The config for `rows` rows against a [n_rows_w, k] weight: the device's tuned entry for
    the shape and row bucket, else `rule_config`."""
    if device_name is not None and _TABLES["on"]:
        table = _load_file(_TABLES["file"]) if _TABLES["file"] else load_table(device_name)
        entry = table.get(shape_key(n_rows_w, k, norm, epi, elt), {})
        tuned = entry.get(str(row_bucket(rows)))
        if tuned is not None:
            return {key: tuned.get(key, DEFAULTS.get(key, 0)) for key in LAUNCH_KEYS}
    return rule_config(n_rows_w, k, rows, elt)


def candidates(k: int, rows: int, elt: int) -> list[dict]:
    """The configs `microbench tune` times for `rows` rows (a bucket) and a K: CUDA-core tiles
    up to 8 rows (more of them at one or two rows, where they win, the deferred-sum ones among
    them), tensor-core tiles of both sides at every bucket (fewer at one row), the wide-side
    ones also with K split two, four or eight ways, and the rule's choice always, so a tuned
    entry is never slower than the rule as measured."""
    warps = 4
    vec = 16 // elt * 32 * warps
    out = []
    if rows <= 8:
        # (BLOCK_N, BLOCK_K, num_warps, AHEAD, DEFER)
        cuda = [(2, 2 * vec, 4, 1, 0), (4, vec, 4, 0, 0), (4, 2 * vec, 4, 0, 0), (4, 2 * vec, 4, 1, 0),
                (8, vec, 4, 1, 0), (2, 2 * vec, 8, 1, 0), (1, 2 * vec, 4, 1, 0)]
        # deferred sums hold BLOCK_B · BLOCK_N · BLOCK_K fp32 partials in registers: small
        # tiles, many programs per SM, at one or two rows only
        cuda += [(4, vec // 4, 4, 0, 1), (4, vec // 2, 4, 0, 1), (8, vec // 4, 4, 0, 1),
                 (4, vec // 2, 8, 0, 1), (8, vec // 2, 8, 0, 1), (2, vec // 2, 4, 0, 1),
                 (4, vec // 4, 4, 0, 2), (8, vec // 2, 4, 0, 1)]
        if rows > 2:
            cuda = cuda[:4]
        for bn, bk, w, ahead, defer in cuda:
            if bk // 2 < k or bk == vec:   # a chunk at least half used
                out.append(dict(BLOCK_N=bn, BLOCK_K=bk, STAGES=3, num_warps=w, AHEAD=ahead, DOT=0,
                                DEFER=defer, SPLIT=1))
    # (BLOCK_N, BLOCK_K, STAGES, num_warps, SPLIT) on tensor cores, the rows as the M side
    dots = [(16, 256, 4, 4, 1), (32, 128, 4, 4, 1), (32, 256, 3, 4, 1)]
    # the weight as the wide side (gemv_mma.py): 64 or 128 weight rows per program as the
    # warpgroup MMA's M, chunks pipelined STAGES deep; a tile whose stages overflow shared
    # memory fails to compile and is skipped
    mma = [(64, 64, 8, 4, 1), (64, 128, 4, 4, 1), (64, 128, 6, 4, 1), (64, 256, 3, 4, 1),
           (128, 64, 6, 4, 1), (128, 128, 4, 8, 1), (32, 128, 6, 4, 1), (32, 256, 4, 4, 1),
           (16, 256, 4, 4, 1)]
    split = [(64, 256, 3, 4), (64, 128, 4, 4), (128, 128, 4, 8), (32, 256, 4, 4)]
    if rows == 1:
        mma, split = mma[1:6], split[:1]
    mma += [(bn, bk, st, w, sp) for bn, bk, st, w in split for sp in (2, 4, 8)
            if k >= 2 * sp * bk]   # two chunks per split at least
    for dot, tiles in ((1, dots), (2, mma)):
        for bn, bk, stages, w, sp in tiles:
            if bk <= max(64, k):
                out.append(dict(BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, num_warps=w, AHEAD=0,
                                DOT=dot, DEFER=0, SPLIT=sp))
    rule = rule_config(0, k, rows, elt)
    if rule not in out:
        out.append(rule)
    return out
