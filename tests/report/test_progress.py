"""The progress view: bars on a terminal, one plain line per event anywhere else."""
import io

from rich.console import Console

from microbench.report.progress import ProgressView, capture_summary, mib, plain_view

COMPILE = "bs 4: torch.compile (compile, warm up, record)"


def drive(view):
    view.say("building tiny (1M params, bfloat16), max batch 8, context 64")
    sizes = [None, 8, 4, 2, 1]
    for done, size in enumerate(sizes):
        view.capture(done, 4, size, 0.5 * done, done * (82 << 20))
    view.rows(0, 2, 1)
    view.say("bs 1: eager, graph in rotation")
    view.rows(1, 2, 4)
    view.phase(COMPILE, None)
    view.phase(COMPILE, 52.3)
    view.rows(2, 2, None)
    view.phase("bs 16: torch.compile (compile, warm up, record)", None)
    view.close()


def test_plain_lines_without_a_terminal():
    f = io.StringIO()
    drive(ProgressView(Console(file=f, force_terminal=False, width=40)))
    out = f.getvalue()
    assert "\r" not in out and "\x1b" not in out
    assert out.splitlines() == [
        "building tiny (1M params, bfloat16), max batch 8, context 64",   # never wrapped at 40
        "capturing CUDA graphs: 4 sizes",
        "captured size 8 (1/4, 0.5 s, pool 82 MiB)",
        "captured size 4 (2/4, 1.0 s, pool 164 MiB)",
        "captured size 2 (3/4, 1.5 s, pool 246 MiB)",
        "captured size 1 (4/4, 2.0 s, pool 328 MiB)",
        "captured 4 sizes in 2.0 s, pool 328 MiB",
        "row 1 of 2: bs 1",
        "bs 1: eager, graph in rotation",
        "row 2 of 2: bs 4",
        f"{COMPILE} ...",
        f"{COMPILE}: 52.3 s",
        out.splitlines()[12],
        "bs 16: torch.compile (compile, warm up, record) (the last took 52 s) ...",
    ]
    assert out.splitlines()[12].startswith("measured 2 rows in ")


def test_bars_on_a_terminal():
    f = io.StringIO()
    drive(ProgressView(Console(file=f, force_terminal=True, width=120)))
    out = f.getvalue()
    assert "━" in out and "\x1b[" in out                       # a bar, drawn in place
    assert "capturing CUDA graphs" in out and "4/4" in out and "pool 328 MiB" in out
    assert "captured 4 sizes in 2.0 s, pool 328 MiB\n" in out   # the summary stays, as a line
    assert "bs 1: eager, graph in rotation" in out              # the rows bar's status
    assert f"{COMPILE}: 52.3 s" in out
    assert "row 1 of 2" not in out                              # no plain lines on a terminal


def test_plain_view_writes_plain_lines_to_any_file():
    f = io.StringIO()
    view = plain_view(f)
    view.capture(0, 1, None, 0.0, 0)
    view.capture(1, 1, 1, 9.6, 328 << 20)
    assert f.getvalue().splitlines()[-1] == "captured 1 size in 9.6 s, pool 328 MiB"


def test_summary_in_the_engines_style():
    assert capture_summary(19, 9.63, 328 << 20) == "captured 19 sizes in 9.6 s, pool 328 MiB"
    assert (mib(512 << 10), mib(1536 << 20)) == ("512 KiB", "1.5 GiB")


def test_status_text_is_not_read_as_markup():
    f = io.StringIO()
    ProgressView(Console(file=f, force_terminal=False)).say("ladder [1, 2] and [bold]x[/bold]")
    assert f.getvalue() == "ladder [1, 2] and [bold]x[/bold]\n"


def test_a_rows_sampling_bar_on_a_terminal_only():
    for terminal in (True, False):
        f = io.StringIO()
        view = ProgressView(Console(file=f, force_terminal=terminal, width=120))
        view.rows(0, 1, 16)
        for k in range(1, 4):
            view.sampling(k, 0.3 * k, 3.0)
        assert ("bs 16 sampling" in f.getvalue()) is terminal
        view.rows(1, 1, None)
        assert "sampling" not in view._tasks
        view.close()
        if not terminal:
            assert f.getvalue().splitlines()[:1] == ["row 1 of 1: bs 16"]
