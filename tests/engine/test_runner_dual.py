"""GraphRunner's full_and_piecewise mode (vLLM's FULL_AND_PIECEWISE): two capture passes into
one pool, and each step routed to a full graph, a piecewise graph or eager. On the CPU capture
is faked (an entry per size whose "graph" records its replays and whose logits say which
routine made it), so what is tested is the runner's bookkeeping and routing; on CUDA
(`gpu`-marked) real graphs replay against eager steps."""
import warnings

import pytest
import torch

from microbench.engine.decoder import ToyDecoder
from microbench.engine.dispatch import CudagraphDispatcher, PaddingDispatcher
from microbench.engine.graphs import GraphEntry
from microbench.engine.modes import MODES, ROUTINES
from microbench.engine.runner import GraphRunner
from microbench.engine.shapes import PRESETS
from tests.engine.fake_capture import fake_captures
from tests.engine.test_runner import inputs, make

gpu = pytest.mark.gpu
TINY = PRESETS["tiny"]
SIZES = [1, 2, 4, 8, 16]
MARK = {"full": 1.0, "piecewise": 2.0}       # the logits a faked graph of each routine returns
GROWTH = {"full": 1 << 18, "piecewise": 1 << 20}   # faked pool growth per captured row


class FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def fake_runner(monkeypatch, sizes=SIZES, mode="full_and_piecewise", oom=(), **kw):
    """A runner whose capture makes fake entries: pool growth GROWTH[routine] per row; a
    (routine, size) in oom runs out of memory."""
    dec = ToyDecoder(TINY, backend="torch", max_batch=max(sizes), max_seq=64,
                     dtype=torch.float32, device="cpu")
    runner = GraphRunner(dec, sizes, mode=mode, **kw)
    pool = {"bytes": 0}

    def capture_one(size, shared, stream, routine="full"):
        if (routine, size) in oom:
            raise torch.OutOfMemoryError("CUDA out of memory")
        pool["bytes"] += size * GROWTH[routine]
        out = torch.full((size, TINY.vocab), MARK[routine])
        return GraphEntry(size=size, graphs=[FakeGraph()], output=out, routine=routine)
    return fake_captures(monkeypatch, runner, capture_one, pool)


def test_the_mode_is_listed_once_with_its_passes_in_vllm_order():
    from microbench.cli import MODES as CLI_MODES
    assert "full_and_piecewise" in MODES and CLI_MODES is MODES and set(ROUTINES) == set(MODES)
    assert ROUTINES["full_and_piecewise"] == ("piecewise", "full")    # mixed first, as vLLM


def test_full_max_size_belongs_to_full_and_piecewise():
    dec = ToyDecoder(TINY, backend="torch", max_batch=8, max_seq=64, dtype=torch.float32,
                     device="cpu")
    with pytest.raises(ValueError, match="full_max_size caps the full pass"):
        GraphRunner(dec, [1, 2], mode="full", full_max_size=1)
    r = GraphRunner(dec, [1, 2, 4, 8], mode="full_and_piecewise", full_max_size=3)
    assert r.pass_sizes("piecewise") == [1, 2, 4, 8] and r.pass_sizes("full") == [1, 2]
    assert isinstance(r.dispatcher, CudagraphDispatcher) and r.route(1) == ("eager", None)


def test_two_passes_each_with_its_sizes_seconds_and_pool_growth(monkeypatch):
    runner = fake_runner(monkeypatch, full_max_size=4)
    events = []
    runner.on_capture = lambda *a, **kw: events.append((*a, kw.get("routine")))
    rep = runner.capture()
    pw, full = rep["passes"]
    assert (pw["routine"], pw["sizes"], pw["skipped"]) == ("piecewise", SIZES, [])
    assert (full["routine"], full["sizes"], full["skipped"]) == ("full", [1, 2, 4], [])
    assert pw["pool_bytes"] == 31 * GROWTH["piecewise"] and full["pool_bytes"] == 7 * GROWTH["full"]
    assert rep["pool_bytes"] == pw["pool_bytes"] + full["pool_bytes"]
    assert 0 <= pw["capture_s"] and 0 <= full["capture_s"]
    assert pw["capture_s"] + full["capture_s"] <= rep["capture_s"]
    # one entry per graph, tagged with its routine, charged its own growth
    assert [(s["routine"], s["size"]) for s in rep["sizes"]] == \
        [("piecewise", s) for s in SIZES] + [("full", s) for s in (1, 2, 4)]
    assert {s["pool_bytes"] for s in rep["sizes"] if s["routine"] == "full" and s["size"] == 4} \
        == {4 * GROWTH["full"]}
    # each pass told from its start (done 0, pool so far), largest first, with its routine
    assert [(d, t, s, r) for d, t, s, _, _, r in events] == [
        (0, 5, None, "piecewise"), (1, 5, 16, "piecewise"), (2, 5, 8, "piecewise"),
        (3, 5, 4, "piecewise"), (4, 5, 2, "piecewise"), (5, 5, 1, "piecewise"),
        (0, 3, None, "full"), (1, 3, 4, "full"), (2, 3, 2, "full"), (3, 3, 1, "full")]
    assert events[6][4] == pw["pool_bytes"]          # the full pass starts where the first ended
    assert sorted(runner.graphs["full"]) == [1, 2, 4] and sorted(runner.entries) == [1, 2, 4]
    assert runner.dispatcher.full.sizes == (1, 2, 4) and runner.dispatcher.sizes == tuple(SIZES)


def test_a_size_out_of_memory_in_one_pass_is_that_pass_skip(monkeypatch):
    runner = fake_runner(monkeypatch, oom={("full", 4)})
    with pytest.warns(RuntimeWarning, match="size 4 ran out of device memory"):
        rep = runner.capture()
    assert rep["passes"][0]["skipped"] == [] and rep["passes"][1]["skipped"] == [4]
    assert rep["skipped"] == [4] and 4 not in runner.graphs["full"]
    assert runner.route(3) == ("piecewise", 4)      # padded to 4: only its piecewise graph
    assert runner.route(5) == ("full", 8)


def test_single_modes_keep_one_pass_and_the_five_argument_callback(monkeypatch):
    runner = fake_runner(monkeypatch, mode="full")
    events = []
    runner.on_capture = lambda *a: events.append(a)   # no routine keyword: it would raise
    rep = runner.capture()
    assert [p["routine"] for p in rep["passes"]] == ["full"] and len(events) == 6
    assert isinstance(runner.dispatcher, PaddingDispatcher)
    assert runner.route(3) == ("full", 4) and runner.route(17) == ("eager", None)


def test_steps_replay_the_routine_the_dispatcher_chose_and_count_it(monkeypatch):
    runner = fake_runner(monkeypatch, full_max_size=4)
    runner.capture()
    seen = []
    for bs, uniform in ((1, True), (3, True), (3, False), (5, True), (16, False), (2, True)):
        t, p, s = inputs(bs, TINY.vocab, seed=bs, device="cpu")
        routine, padded = runner.route(bs, uniform)
        out = runner.step(t, p, s, uniform=uniform) if bs % 2 else \
            runner.step_packed(torch.stack([t, p, s]), uniform=uniform)
        assert out.shape == (bs, TINY.vocab) and (out == MARK[routine]).all()
        seen.append((routine, padded))
    assert seen == [("full", 1), ("full", 4), ("piecewise", 4), ("piecewise", 8),
                    ("piecewise", 16), ("full", 2)]
    assert [runner.graphs["full"][n].graphs[0].replays for n in (1, 2, 4)] == [1, 1, 1]
    assert runner.graphs["piecewise"][4].graphs[0].replays == 1
    t, p, s = inputs(17, TINY.vocab, device="cpu")
    with pytest.warns(RuntimeWarning, match="batch size 17 exceeds the largest captured size 16"):
        runner.step(t, p, s, uniform=False)
    c = runner.counts
    assert (c["replays"], c["full_replays"], c["piecewise_replays"]) == (6, 3, 3)
    assert (c["fallbacks"], c["eager_steps"]) == (1, 1)
    assert c["padded_rows"] == 1 + 1 + 3 and c["real_rows"] == 1 + 3 + 3 + 5 + 16 + 2 + 17


def test_a_mixed_batch_with_only_a_full_graph_runs_eagerly_and_says_why(monkeypatch):
    runner = fake_runner(monkeypatch, oom={("piecewise", 4)})
    with pytest.warns(RuntimeWarning, match="ran out"):
        runner.capture()
    t, p, s = inputs(3, TINY.vocab, device="cpu")
    with pytest.warns(RuntimeWarning, match="batch size 3 has no graph for a mixed batch"):
        runner.step(t, p, s, uniform=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (runner.step(t, p, s) == MARK["full"]).all()     # uniform: its full graph
    assert runner.counts["fallbacks"] == 1 and runner.counts["full_replays"] == 1


# ---- CUDA ----------------------------------------------------------------------------------
@gpu
@pytest.mark.parametrize("preset", ["tiny", "opt-125m"])
def test_full_and_piecewise_replays_equal_eager(preset):
    """Both passes into one pool (the full pass capped at 8), then every batch size 1..20,
    uniform and mixed, padded and not, against an eager step from the same cache."""
    max_b = SIZES[-1] + 4
    dec, ref = make(preset, max_b), make(preset, max_b)
    runner = GraphRunner(dec, SIZES, mode="full_and_piecewise", full_max_size=8)
    rep = runner.capture()
    pw, full = rep["passes"]
    assert (pw["routine"], pw["sizes"], full["routine"], full["sizes"]) == \
        ("piecewise", SIZES, "full", [1, 2, 4, 8])
    assert pw["capture_s"] > 0 and full["capture_s"] > 0 and pw["pool_bytes"] > 0
    assert full["pool_bytes"] >= 0 and rep["pool_bytes"] == pw["pool_bytes"] + full["pool_bytes"]
    assert all(s["capture_s"] > 0 for s in rep["sizes"]) and len(rep["sizes"]) == 9
    ran = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # bs above 16 falls back, by design
        for bs in range(1, max_b + 1):
            for uniform in (True, False):
                for ck, rk in zip(dec.k_cache + dec.v_cache, ref.k_cache + ref.v_cache):
                    ck.copy_(rk)
                t, p, s = inputs(bs, dec.shape.vocab, seed=bs)
                ran[bs, uniform] = routine, padded = runner.route(bs, uniform)
                got = runner.step_packed(torch.stack([t, p, s]), uniform=uniform) if bs % 2 \
                    else runner.step(t, p, s, uniform=uniform)
                want = ref.step(t, p, s)
                if padded in (None, bs):
                    assert torch.equal(got, want), (bs, uniform, routine)
                else:   # padded rows change matmul shapes, hence rounding (as test_runner.py)
                    torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.02)
                for ck, rk in zip(dec.k_cache + dec.v_cache, ref.k_cache + ref.v_cache):
                    torch.testing.assert_close(ck[s].float(), rk[s].float(), atol=0.05, rtol=0.02)
    assert ran[3, True] == ("full", 4) and ran[3, False] == ("piecewise", 4)
    assert ran[12, True] == ("piecewise", 16) and ran[20, True] == ("eager", None)
    c = runner.counts
    assert c["full_replays"] == 8 and c["piecewise_replays"] == 16 + 8
    assert c["fallbacks"] == 2 * (max_b - 16) and c["replays"] == 32
    runner.close()
