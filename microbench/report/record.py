"""Results: runs are rows; every run records where and how it was measured.

A run lives in `<out>/<run-id>/`: `run.json` (config, environment, totals, rows, and whatever
else the command measured) and `<kind>.csv` (one row per batch size, columns in row-field
order). Files are written to a temporary name and renamed, so an interrupted run never leaves
a half-written file.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
from pathlib import Path

from microbench.report.schema import SCHEMA_VERSION, RunFileError, RunRecord, validate_run


def run_id(kind: str, env: dict, tag: str = "") -> str:
    gpu = re.sub(r"[^a-z0-9]+", "-", (env.get("gpu") or "cpu").lower()).strip("-")
    gpu = gpu.replace("nvidia-", "")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    parts = [stamp, kind, tag, gpu]
    return "-".join(p for p in parts if p)


def atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rows_to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    for r in rows[1:]:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _flat(v) for k, v in r.items()})
    return buf.getvalue()


def _flat(v):
    return json.dumps(v) if isinstance(v, (dict, list)) else v


def write_run(out_dir: Path, run: dict, csv_name: str = "sweep.csv") -> Path:
    """Write run.json (stamped with the schema version) and the rows' CSV into out_dir
    (created); returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {k: run[k] for k in ("kind",) if k in run}
    doc["schema_version"] = SCHEMA_VERSION   # kind first, then the schema it follows
    doc.update({k: v for k, v in run.items() if k != "schema_version"})
    atomic_write(out_dir / "run.json", json.dumps(doc, indent=2, default=_json_default) + "\n")
    if run.get("rows"):
        atomic_write(out_dir / csv_name, rows_to_csv(run["rows"]))
    return out_dir


def write_reproduce_run(out_dir: Path, run: dict) -> Path:
    """A reproduce run: run.json and one CSV per experiment (`<name>.csv`)."""
    out_dir = write_run(Path(out_dir), run)
    for e in run.get("phenomena", []):
        if e.get("rows"):
            atomic_write(out_dir / f"{e['name']}.csv", rows_to_csv(e["rows"]))
    return out_dir


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def read_run(path) -> RunRecord:
    """Read and validate a run from its folder or its run.json; RunFileError (a ValueError)
    with one line naming the file and what is wrong if it is not a readable run."""
    p = Path(path)
    if p.is_dir():
        p = p / "run.json"
        if not p.is_file():
            raise RunFileError(f"{path}: no run.json in this folder")
    if not p.exists():
        raise RunFileError(f"{path}: no such file or folder (expected a run folder or its run.json)")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RunFileError(f"{p}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise RunFileError(f"{p}: not valid JSON ({e})") from None
    return validate_run(data, p)


def load_run(path) -> dict:
    """A validated run as the dict its producer wrote (tables read these); see read_run."""
    return read_run(path).raw


def check_writable(out: Path) -> None:
    """Raise ValueError if `out` cannot be created or written (tries both, leaves the folder)."""
    out = Path(out)
    created = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to {out} ({e.strerror or e})") from None
    finally:
        for p in created:  # deepest first: leave no empty folder behind
            try:
                p.rmdir()
            except OSError:
                pass
