"""The kernels are installed as `microbench.kernels`, never as a top-level package `kernels`:
that name belongs to a published package that other ML libraries import when present."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PUBLIC = ["rmsnorm", "rope", "store_kv", "decode_attention", "swiglu"]


def test_import_kernels_does_not_reach_this_project(tmp_path):
    """From outside the repository (and without PYTHONPATH), `kernels` is either absent or some
    other package: the installation does not put this repository's kernels/ on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib.util, json; s = importlib.util.find_spec('kernels'); print(s.origin if s else '')"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True)
    origin = res.stdout.strip()
    assert not origin or not Path(origin).resolve().is_relative_to(REPO), origin


@pytest.mark.parametrize("name", PUBLIC + [n + "_ref" for n in PUBLIC])
def test_microbench_kernels_exposes_the_public_names(name):
    kernels = importlib.import_module("microbench.kernels")
    assert callable(getattr(kernels, name)) and name in kernels.__all__
