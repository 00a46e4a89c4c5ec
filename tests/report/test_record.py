"""The run record: write and load round trip, CSV columns, atomic writes, and the schema's
validation (one RunFileError line naming the file and what is wrong)."""
import json
import os
from pathlib import Path

import pytest

from microbench.report.record import atomic_write, load_run, read_run, rows_to_csv, write_run
from microbench.report.schema import (SCHEMA_VERSION, Env, RunFileError, SweepConfigRecord,
                                      SweepRow, TPSweepConfigRecord)
from tests.report.runs import kernels_run, launch_run, reproduce_run, sweep_run


def test_run_round_trip(tmp_path):
    run = sweep_run()
    run["rows"][1]["extra"] = "x"
    d = write_run(tmp_path / "run", run)
    assert load_run(d) == {**run, "schema_version": SCHEMA_VERSION}
    assert list(json.loads((d / "run.json").read_text()))[:2] == ["kind", "schema_version"]
    lines = (d / "sweep.csv").read_text().splitlines()
    assert lines[0].startswith("bs,padded_bs,ran_as,eager_step_us,") and lines[0].endswith(",extra")
    assert lines[2].startswith("4,4,full,950.0,") and lines[2].endswith(",x")
    assert not [p for p in os.listdir(d) if p.startswith(".")]  # no temporary files left


def test_rewriting_a_loaded_run_keeps_one_schema_version(tmp_path):
    d = write_run(tmp_path / "a", sweep_run())
    d2 = write_run(tmp_path / "b", load_run(d))
    assert load_run(d2)["schema_version"] == SCHEMA_VERSION


def test_typed_record():
    rec = read_run_from(sweep_run())
    assert rec.kind == "sweep" and isinstance(rec.config, SweepConfigRecord)
    assert isinstance(rec.env, Env) and rec.env.gpu == "Test GPU"
    assert [type(r) for r in rec.rows] == [SweepRow, SweepRow] and rec.rows[1].bs == 4
    assert rec.schema_version is None and rec.raw["rows"][0]["bs"] == 1


def read_run_from(run: dict):
    from microbench.report.schema import validate_run
    return validate_run(run, "run.json")


@pytest.mark.parametrize("make", [sweep_run, launch_run, kernels_run, reproduce_run])
def test_each_kind_loads(tmp_path, make):
    d = write_run(tmp_path / "r", make())
    assert read_run(d).kind == make()["kind"]


def test_runs_from_before_schema_versions_load(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(sweep_run()))   # no schema_version
    assert load_run(tmp_path)["kind"] == "sweep"


def test_graph_fields_may_be_null_under_mode_none():
    run = sweep_run()
    run["config"]["mode"] = "none"
    for r in run["rows"]:
        r.update(padded_bs=None, ran_as="eager", graph_step_us=None, speedup=None)
    assert read_run_from(run).rows[0].speedup is None


def test_tp_config_needs_tp():
    run = sweep_run(kind="sweep-tp")
    with pytest.raises(RunFileError, match="'config' has no 'tp'"):
        read_run_from(run)
    run["config"]["tp"] = 2
    assert isinstance(read_run_from(run).config, TPSweepConfigRecord)


def _set(path, value):
    """A corruption: set (or with value ... delete) one nested field of a sweep run."""
    def apply(run):
        *head, last = path
        obj = run
        for k in head:
            obj = obj[k]
        if value is ...:
            del obj[last]
        else:
            obj[last] = value
        return run
    return apply


BAD = {
    "empty-object": (lambda r: {}, "no 'kind'"),
    "a-list": (lambda r: [r], "not a microbench run"),
    "unknown-kind": (_set(["kind"], "sweeep"), "unknown kind 'sweeep'"),
    "no-config": (_set(["config"], ...), "missing 'config'"),
    "no-env": (_set(["env"], ...), "missing 'env'"),
    "env-a-string": (_set(["env"], "H100"), "'env' is a string"),
    "env-without-torch": (_set(["env", "torch"], ...), "'env' has no 'torch'"),
    "rows-deleted": (_set(["rows"], ...), "missing 'rows'"),
    "rows-empty": (_set(["rows"], []), "'rows' is empty"),
    "rows-an-object": (_set(["rows"], {}), "'rows' is empty"),
    "row-a-number": (_set(["rows", 0], 3), "'rows[0]' is a number"),
    "string-for-number": (_set(["rows", 1, "eager_step_us"], "fast"),
                          "'rows[1].eager_step_us' is a string ('fast'), where a number belongs"),
    "bool-for-number": (_set(["rows", 0, "speedup"], True), "'rows[0].speedup' is true or false"),
    "float-for-int": (_set(["rows", 0, "bs"], 1.5), "'rows[0].bs' is a number (1.5), where an integer"),
    "missing-row-field": (_set(["rows", 0, "ran_as"], ...), "'rows[0]' has no 'ran_as'"),
    "config-without-preset": (_set(["config", "preset"], ...), "'config' has no 'preset'"),
    "bs-of-strings": (_set(["config", "bs"], ["1"]), "'config.bs' is a list"),
    "future-schema": (_set(["schema_version"], SCHEMA_VERSION + 1), "schema_version"),
    "launch-not-an-object": (_set(["launch"], "n/a"), "'launch' is a string"),
    "wall-s-a-string": (_set(["wall_s"], "1 s"), "'wall_s' is a string"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_invalid_runs_raise_one_line_naming_the_file(tmp_path, name):
    corrupt, message = BAD[name]
    (tmp_path / "run.json").write_text(json.dumps(corrupt(sweep_run())))
    with pytest.raises(RunFileError) as e:
        load_run(tmp_path)
    text = str(e.value)
    assert "\n" not in text and str(tmp_path / "run.json") in text and message in text
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("make, corrupt, message", [
    (launch_run, _set(["launch"], ...), "missing 'launch'"),
    (launch_run, _set(["launch", "host_us"], ...), "'launch' has no 'host_us'"),
    (reproduce_run, _set(["phenomena"], []), "'phenomena' is empty"),
    (reproduce_run, _set(["phenomena", 0, "held"], "yes"), "'phenomena[0].held' is a string"),
    (kernels_run, _set(["copy"], ...), "missing 'copy'"),
    (kernels_run, _set(["rows", 0, "time_us"], None), "'rows[0].time_us' is null"),
])
def test_other_kinds_validate_their_parts(tmp_path, make, corrupt, message):
    (tmp_path / "run.json").write_text(json.dumps(corrupt(make())))
    with pytest.raises(RunFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_run(tmp_path)


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d / "run.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "run.json").write_text(""), "not valid JSON"),
    (lambda d: (d / "run.json").write_bytes(b"\xff\xfe\x00binary"), "cannot be read"),
    (lambda d: None, "no run.json in this folder"),
])
def test_unreadable_files(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(RunFileError, match=message):
        load_run(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(RunFileError, match="no such file or folder"):
        load_run(tmp_path / "nope")


def test_rows_to_csv_keeps_field_order():
    assert rows_to_csv([dict(b=1, a=2)]).splitlines()[0] == "b,a"


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.json"
    atomic_write(p, json.dumps({"a": 1}))
    atomic_write(p, json.dumps({"b": 2}))
    assert json.loads(p.read_text()) == {"b": 2}


RESULTS = sorted((Path(__file__).resolve().parents[2] / "results").glob("**/run.json"))


@pytest.mark.skipif(not RESULTS, reason="no reference runs under results/")
@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.parent.name)
def test_every_reference_run_validates(path):
    assert read_run(path).kind
