"""A GraphRunner whose captures are faked, for the capture bookkeeping's CPU tests: the
runner's own capture loop runs, with `_capture_one` and the pool size given by the test and the
CUDA calls around them made no-ops."""
import torch

from microbench.engine import runner as runner_mod


def fake_captures(monkeypatch, runner, capture_one, pool: dict):
    """Make `runner` capture through `capture_one(size, shared, stream, routine)`, with
    pool["bytes"] as the pool's size."""
    monkeypatch.setattr(runner, "_capture_one", capture_one)
    monkeypatch.setattr(runner, "_total_pool_bytes", lambda: pool["bytes"])
    monkeypatch.setattr(runner_mod, "side_stream", lambda i: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, 1))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in ("synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    return runner
