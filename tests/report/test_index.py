"""The results index: one table per device from the runs' run.json, unreadable runs listed."""
import json
import subprocess
import sys

import pytest

from microbench.report.index import headline, render_index, scan, write_index

ENV = dict(command="microbench sweep --bs 1,4 --preset tiny", git="abc123def456",
           date="2026-11-30T10:00:00+00:00", gpu="NVIDIA H200")


def _sweep():
    rows = [dict(bs=4, speedup=2.5), dict(bs=1, speedup=3.25)]
    return dict(kind="sweep", config=dict(preset="tiny", bs=[1, 4]), env=ENV, rows=rows,
                shape_check=dict(held=True, why="held"), interrupted=False)


def _reproduce():
    env = dict(ENV, command="microbench reproduce --preset tiny")
    phen = [dict(name="speedup-fade", held=True), dict(name="padding-waste", held=False),
            dict(name="pool-growth", held=True)]
    return dict(kind="reproduce", config=dict(preset="tiny"), env=env, phenomena=phen)


def _write(folder, run=None, text=None):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(text if text is not None else json.dumps(run))


@pytest.fixture
def tree(tmp_path):
    _write(tmp_path / "h200" / "20261130-100000-sweep-tiny-h200", _sweep())
    _write(tmp_path / "h200" / "20261130-100100-reproduce-tiny-h200", _reproduce())
    _write(tmp_path / "h200x2" / "20261130-110000-sweep-tiny-tp2-h200", text='{"kind": "sw')
    (tmp_path / "h200" / "logs").mkdir()  # a stage's logs: not a run
    (tmp_path / "h200" / "logs" / "sweep.log").write_text("bs 1\n")
    return tmp_path


def _row(text, folder):
    lines = [ln for ln in text.splitlines() if f"[`{folder}`]" in ln]
    assert len(lines) == 1, text
    return [c.strip() for c in lines[0].strip("|").split(" | ")]


def test_one_table_per_device_with_every_run(tree):
    rows = scan(tree)
    assert list(rows) == ["h200", "h200x2"]
    assert [r.kind for r in rows["h200"]] == ["sweep", "reproduce"]  # logs/ left out
    text = render_index(tree)
    assert text.count("| run folder | kind | preset | command | git revision | date | headline |") == 2
    assert text.index("## h200\n") < text.index("## h200x2\n")
    sweep = _row(text, "h200/20261130-100000-sweep-tiny-h200")
    assert sweep[1:] == ["sweep", "tiny", "`microbench sweep --bs 1,4 --preset tiny`",
                         "abc123def456", "2026-11-30 10:00",
                         "speedup 3.25x at bs 1; shape check held"]
    rep = _row(text, "h200/20261130-100100-reproduce-tiny-h200")
    assert rep[1:3] == ["reproduce", "tiny"]
    assert rep[-1] == "2/3 held (not held: padding-waste)"


def test_corrupt_run_is_listed_unreadable(tree):
    text = render_index(tree)
    bad = _row(text, "h200x2/20261130-110000-sweep-tiny-tp2-h200")
    assert bad[1] == "unreadable"
    assert "not valid JSON" in bad[-1]
    assert str(tree) not in bad[-1]  # the reason names no machine's path
    assert "1 run, 1 unreadable." in text


def test_missing_run_json_and_missing_fields_are_unreadable(tmp_path):
    (tmp_path / "h100" / "20261130-empty").mkdir(parents=True)
    _write(tmp_path / "h100" / "20261130-noconfig", dict(kind="sweep"))
    _write(tmp_path / "h100" / "20261130-badrows", dict(kind="sweep", config={}, rows=[1]))
    rows = {r.folder.split("/")[1]: r for r in scan(tmp_path)["h100"]}
    assert {r.kind for r in rows.values()} == {"unreadable"}
    assert rows["20261130-empty"].headline == "no run.json"
    assert "no 'config'" in rows["20261130-noconfig"].headline


def test_twice_gives_the_same_file(tree):
    path = write_index(tree)
    assert path == tree / "README.md"
    first = path.read_text()
    assert write_index(tree).read_text() == first
    assert "microbench index results" in first and "microbench show" in first


def test_empty_tree_says_no_runs(tmp_path):
    text = write_index(tmp_path).read_text()
    assert "No runs yet." in text and "| run folder |" not in text
    assert write_index(tmp_path).read_text() == text  # its own README is not a run


def test_headlines_of_other_kinds():
    launch = dict(kind="launch", config={}, launch=dict(host_us=dict(triton=dict(median=12.34)),
                                                        copy=dict(bytes_per_s=4.2e12)))
    assert headline(launch) == "triton launch 12.3 us; copy 4.20 TB/s"
    assert headline(dict(kind="kernels", config={}, rows=[{}, {}])) == "2 cases"
    tp = dict(kind="sweep-tp", config=dict(tp=2), rows=[dict(bs=1, speedup=7.0)])
    assert headline(tp) == "TP 2: speedup 7.00x at bs 1"
    allreduce = dict(kind="launch-tp", config=dict(tp=2),
                     allreduce=dict(fit=dict(world=2, latency_us=12.3, bus_bw=2.4e11)))
    assert headline(allreduce) == "TP 2: all-reduce 12.3 us + bytes at 240 GB/s bus bandwidth"
    assert headline(dict(_sweep(), interrupted=True)).endswith("(interrupted)")
    assert headline(dict(kind="something-new", config={})) == "-"


def test_pipes_in_a_command_are_escaped(tmp_path):
    run = dict(_sweep(), env=dict(ENV, command="microbench sweep --bs 1 | tee x"))
    _write(tmp_path / "h200" / "r1", run)
    assert "`microbench sweep --bs 1 \\| tee x`" in render_index(tmp_path)


def test_no_torch_import():
    code = "import sys, microbench.report.index; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_sweep_headline_names_the_bundle_before_the_graphs_alone():
    run = dict(_sweep(), shape_check=dict(held=False, why="speedup rises with batch size"),
               shape_check_engine=dict(held=True, why="held"))
    assert headline(run) == ("speedup 3.25x at bs 1; bundle shape check held; graphs-alone shape "
                             "check not held (speedup rises with batch size)")
    run["rows"][1]["engine_eager_speedup"] = 5.27          # bs 1's row: both ratios named
    assert headline(run).startswith("at bs 1 engine-eager / graph 5.27x (the bundle), eager / "
                                    "graph 3.25x (graphs alone); bundle shape check held")
