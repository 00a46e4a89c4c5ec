"""Where a run was measured: the environment record."""
import os

import pytest

from microbench.bench.env import environment


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_environment_records_the_cpus_this_process_may_use(monkeypatch):
    """A process narrowed to one core (as a pinned thread is) says so beside the host's count."""
    assert 1 <= environment()["cpus_allowed"] <= environment()["host_cpus"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert environment()["cpus_allowed"] == 1
