"""GraphRunner's on_capture callback and the NVTX helper, on the CPU: capture itself is faked
(one entry per size, a pool that grows), so what is tested is what the runner tells its caller."""
import time

import pytest
import torch

from microbench.engine.decoder import ToyDecoder
from microbench.engine.nvtx import nvtx_range, phase
from microbench.engine.runner import GraphEntry, GraphRunner
from microbench.engine.shapes import PRESETS
from tests.engine.fake_capture import fake_captures


def fake_runner(monkeypatch, sizes, oom=()):
    dec = ToyDecoder(PRESETS["tiny"], backend="torch", max_batch=max(sizes), max_seq=64,
                     dtype=torch.float32, device="cpu")
    runner = GraphRunner(dec, sizes, mode="full")
    pool = {"bytes": 0}

    def capture_one(size, shared, stream, routine="full"):
        if size in oom:
            raise torch.OutOfMemoryError("CUDA out of memory")
        pool["bytes"] += size << 20
        return GraphEntry(size=size, graphs=[], output=None)
    return fake_captures(monkeypatch, runner, capture_one, pool)


def test_on_capture_is_told_each_size_largest_first(monkeypatch):
    runner = fake_runner(monkeypatch, [1, 2, 4])
    events = []
    runner.on_capture = lambda *a: events.append(a)
    report = runner.capture()
    assert [(d, t, s) for d, t, s, _, _ in events] == [(0, 3, None), (1, 3, 4), (2, 3, 2), (3, 3, 1)]
    assert [p for *_, p in events] == [0, 4 << 20, 6 << 20, 7 << 20]
    secs = [s for _, _, _, s, _ in events]
    assert secs == sorted(secs) and secs[-1] <= report["capture_s"]
    assert sorted(runner.entries) == [1, 2, 4]


def test_a_skipped_size_still_counts_as_done(monkeypatch):
    runner = fake_runner(monkeypatch, [1, 2, 4], oom=(2,))
    events = []
    runner.on_capture = lambda *a: events.append(a)
    with pytest.warns(RuntimeWarning, match="size 2 ran out of device memory"):
        runner.capture()
    assert [(d, s) for d, _, s, _, _ in events] == [(0, None), (1, 4), (2, 2), (3, 1)]
    assert runner.skipped == [2]


def test_the_runner_prints_nothing(monkeypatch, capsys):
    fake_runner(monkeypatch, [1, 2]).capture()
    assert capsys.readouterr() == ("", "")


def test_nvtx_range_is_a_profiler_range_and_a_no_op_without_cuda():
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with nvtx_range("capture size 8"):
            torch.ones(4).sum()
    assert any(e.name == "capture size 8" for e in prof.events())


def test_nvtx_range_pops_on_error():
    with pytest.raises(KeyError):
        with nvtx_range("boom"):
            raise KeyError("x")


def test_phase_tells_its_start_and_its_seconds():
    seen = []
    with phase("bs 4: compiling", lambda name, s: seen.append((name, s))):
        time.sleep(0.01)
    assert seen[0] == ("bs 4: compiling", None)
    assert seen[1][0] == "bs 4: compiling" and seen[1][1] >= 0.01
    with phase("quiet"):        # no callback: only the range
        pass
