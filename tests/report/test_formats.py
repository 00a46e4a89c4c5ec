"""Each --format of a document: terminal table (rich), Markdown, CSV and JSON."""
import csv
import io
import json

import pytest

from microbench.report.formats import FORMATS, Doc, Table, render
from microbench.report.render import RenderError, render_run
from microbench.report.tables import sweep_doc
from tests.report.runs import kernels_run, launch_run, reproduce_run, sweep_run


def doc():
    return Doc([Table(["bs", "eager us", "note"], [["1", "900.0", "a|b"], ["4", "-", "x"]],
                      title="GPU Test | preset tiny"), "run took 1.5 s\nsecond line"])


def test_table_is_drawn_by_rich_without_colour_off_a_terminal():
    out = render(doc(), "table")
    lines = out.splitlines()
    assert lines[0] == "GPU Test | preset tiny" and lines[-2:] == ["run took 1.5 s", "second line"]
    assert "─" in lines[2] and "\x1b[" not in out
    assert lines[3].split() == ["1", "900.0", "a|b"]


def test_table_in_colour_on_a_terminal():
    assert "\x1b[" in render(doc(), "table", color=True)


def test_a_wide_table_is_never_wrapped():
    cols = [f"column {i}" for i in range(30)]
    out = render(Doc([Table(cols, [[str(i) for i in range(30)]])]), "table")
    assert len(out.splitlines()) == 3 and len(out.splitlines()[0]) > 200


def test_markdown_pastes_into_an_issue():
    out = render(doc(), "markdown")
    assert "**GPU Test | preset tiny**" in out
    assert "| bs | eager us | note |" in out and "|---:|---:|---:|" in out
    assert "| 1 | 900.0 | a\\|b |" in out          # a pipe in a cell is escaped
    assert "- run took 1.5 s\n- second line" in out


def test_csv_holds_the_tables_only_with_absent_values_empty():
    rows = list(csv.reader(io.StringIO(render(doc(), "csv"))))
    assert rows == [["bs", "eager us", "note"], ["1", "900.0", "a|b"], ["4", "", "x"]]


def test_json_is_the_records_or_the_cells():
    assert json.loads(render(doc(), "json")) == [{"bs": "1", "eager us": "900.0", "note": "a|b"},
                                                 {"bs": "4", "eager us": "-", "note": "x"}]
    run = sweep_run()
    assert json.loads(render(sweep_doc(run), "json")) == run["rows"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("make", [sweep_run, launch_run, kernels_run])
def test_every_kind_with_tables_renders_in_every_format(make, fmt):
    out = render_run(make(), fmt=fmt)
    assert out.strip()
    if fmt == "json":
        json.loads(out)
    if fmt == "csv":
        assert "\x1b[" not in out and not out.startswith("GPU")


def test_launch_json_names_its_two_tables():
    data = json.loads(render_run(launch_run(), fmt="json"))
    assert set(data) == {"launchers", "replay"} and data["launchers"][0]["launcher"] == "torch"


def test_a_run_without_tables_prints_text_or_json_only():
    assert "speedup-fade" in render_run(reproduce_run(), fmt="table")
    assert json.loads(render_run(reproduce_run(), fmt="json"))[0]["name"] == "speedup-fade"
    with pytest.raises(RenderError, match="no table to write as csv"):
        render_run(reproduce_run(), fmt="csv")
