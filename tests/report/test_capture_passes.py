"""The two capture passes of full_and_piecewise as a user sees them: the progress view's bars
and summary line, the sweep footer's capture line, and the run record's schema. Numbers here
are synthetic fixtures, not measurements."""
import io

import pytest
from rich.console import Console

from microbench.report.progress import ProgressView, passes_summary
from microbench.report.schema import RunFileError, validate_run
from microbench.report.tables import capture_line, sweep_footer
from tests.report.runs import sweep_run

MiB = 1 << 20
PASSES = [dict(routine="piecewise", sizes=[1, 2, 4, 8], capture_s=3.14, pool_bytes=120 * MiB,
               skipped=[]),
          dict(routine="full", sizes=[1, 2, 4], capture_s=2.0, pool_bytes=40 * MiB, skipped=[8])]
CAPTURE = dict(capture_s=5.2, pool_bytes=160 * MiB, skipped=[8], passes=PASSES,
               sizes=[dict(size=s, warmup_s=0.1, capture_s=0.5, pool_bytes=MiB, routine=r)
                      for r, sizes in (("piecewise", [1, 2, 4, 8]), ("full", [1, 2, 4]))
                      for s in sizes])


def drive(view):
    """What GraphRunner tells on_capture under full_and_piecewise: the piecewise pass (two
    sizes), then the full pass (one), the pool's bytes so far throughout."""
    view.capture(0, 2, None, 0.0, 0, routine="piecewise")
    view.capture(1, 2, 2, 1.0, 80 * MiB, routine="piecewise")
    view.capture(2, 2, 1, 3.1, 120 * MiB, routine="piecewise")
    view.capture(0, 1, None, 0.0, 120 * MiB, routine="full")
    view.capture(1, 1, 1, 2.0, 160 * MiB, routine="full")
    view.close()


def test_summary_names_both_passes_in_capture_order():
    assert passes_summary(PASSES, 160 * MiB) == (
        "captured 4 piecewise sizes in 3.1 s, pool +120 MiB; 3 full sizes in 2.0 s, "
        "pool +40 MiB; 5.1 s, pool 160 MiB in all")
    one = [dict(routine="full", sizes=1, capture_s=0.5, pool_bytes=MiB)]
    assert passes_summary(one, MiB) == "captured 1 full size in 0.5 s, pool +1 MiB; 0.5 s, pool 1 MiB in all"


def test_plain_lines_show_each_pass_then_one_summary():
    f = io.StringIO()
    drive(ProgressView(Console(file=f, force_terminal=False, width=60)))
    assert f.getvalue().splitlines() == [
        "capturing CUDA graphs (mixed, piecewise): 2 sizes",
        "captured size 2 (mixed, piecewise) (1/2, 1.0 s, pool 80 MiB)",
        "captured size 1 (mixed, piecewise) (2/2, 3.1 s, pool 120 MiB)",
        "capturing CUDA graphs (decode, full): 1 sizes",
        "captured size 1 (decode, full) (1/1, 2.0 s, pool 160 MiB)",
        "captured 2 piecewise sizes in 3.1 s, pool +120 MiB; 1 full size in 2.0 s, "
        "pool +40 MiB; 5.1 s, pool 160 MiB in all"]


def test_bars_on_a_terminal_one_per_pass_and_the_summary_stays():
    f = io.StringIO()
    drive(ProgressView(Console(file=f, force_terminal=True, width=160)))
    out = f.getvalue()
    assert "capturing CUDA graphs (mixed, piecewise)" in out
    assert "capturing CUDA graphs (decode, full)" in out
    assert out.count("captured 2 piecewise sizes") == 1 and "in all\n" in out


def test_a_full_pass_with_no_sizes_still_closes_the_summary():
    f = io.StringIO()
    view = ProgressView(Console(file=f, force_terminal=False))
    view.capture(0, 1, None, 0.0, 0, routine="piecewise")
    view.capture(1, 1, 4, 1.0, 8 * MiB, routine="piecewise")
    view.capture(0, 0, None, 0.0, 8 * MiB, routine="full")
    assert f.getvalue().splitlines()[-1] == (
        "captured 1 piecewise size in 1.0 s, pool +8 MiB; 0 full sizes in 0.0 s, pool +0 KiB; "
        "1.0 s, pool 8 MiB in all")


def test_footer_capture_line_one_pass_and_two():
    single = dict(capture_s=9.61, pool_bytes=328 * MiB, sizes=[{}] * 19, skipped=[])
    assert capture_line(single) == "capture: 9.61 s for 19 sizes, pool 328.0 MiB"
    assert capture_line(CAPTURE) == (
        "capture: 5.20 s (warm-up steps 0.70 s, compiles on first use included; recording "
        "3.50 s), pool 160.0 MiB, in 2 passes: piecewise 4 sizes in 3.14 s, pool "
        "+120.0 MiB; full 3 sizes in 2.00 s, pool +40.0 MiB, skipped (out of memory): [8]")
    assert capture_line(CAPTURE) in sweep_footer(sweep_run(capture=CAPTURE))


def test_footer_capture_line_says_how_much_was_warm_up():
    """A cold Triton cache puts its compiles in the warm-up steps before each recording: the
    line splits the two, so 22 s of capture with 21.9 s of warm-up reads as compiles."""
    sizes = [dict(size=s, warmup_s=w, capture_s=0.012, pool_bytes=0, routine="full")
             for s, w in ((1, 2.54), (2, 3.17), (4, 0.04))]
    cap = dict(capture_s=5.9, pool_bytes=322 * MiB, sizes=sizes, skipped=[],
               passes=[dict(routine="full", sizes=[1, 2, 4], capture_s=5.9,
                            pool_bytes=322 * MiB, skipped=[])])
    assert capture_line(cap) == (
        "capture: 5.90 s for 3 sizes (warm-up steps 5.75 s, compiles on first use included; "
        "recording 0.04 s), pool 322.0 MiB")


def test_run_record_holds_both_passes_and_old_runs_still_read():
    rec = validate_run(sweep_run(capture=CAPTURE), "run.json")
    assert [p["routine"] for p in rec.raw["capture"]["passes"]] == ["piecewise", "full"]
    old = dict(capture_s=1.0, pool_bytes=MiB, skipped=[],      # before passes existed
               sizes=[dict(size=1, warmup_s=0.1, capture_s=0.5, pool_bytes=MiB)])
    validate_run(sweep_run(capture=old), "old.json")
    validate_run(sweep_run(), "none.json")                     # no capture recorded at all


@pytest.mark.parametrize("corrupt, message", [
    (lambda c: c["passes"][1].pop("routine"), "'capture.passes[1]' has no 'routine'"),
    (lambda c: c["passes"][0].update(capture_s="3"), "'capture.passes[0].capture_s' is a string"),
    (lambda c: c.update(passes="two"), "'capture.passes' is a string"),
    (lambda c: c.pop("pool_bytes"), "'capture' has no 'pool_bytes'")])
def test_a_broken_capture_record_is_named(corrupt, message):
    run = sweep_run(capture=CAPTURE)
    corrupt(run["capture"])
    with pytest.raises(RunFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_run(run, "run.json")


def test_the_capture_records_have_their_own_module_and_schema_still_names_them():
    from pathlib import Path

    from microbench.report import capture_schema, schema
    assert schema.CaptureRecord is capture_schema.CaptureRecord
    assert schema.CapturePass is capture_schema.CapturePass
    assert schema.KINDS["sweep"].optional["capture"] is capture_schema.CaptureRecord
    assert len(Path(schema.__file__).read_text().splitlines()) <= 350
