"""Where a run was measured: the device, driver, clocks, library versions and git revision, and
the one check that a command has a CUDA GPU to measure on.

Probing the device lives here, in the measuring layer: the report layer only reads what a run
recorded.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path


class GPURequired(RuntimeError):
    """Raised by commands that need CUDA on a machine without it."""


def require_cuda(command: str):
    import torch
    if not torch.cuda.is_available():
        raise GPURequired(f"`microbench {command}` needs a CUDA GPU and none was found; "
                          f"`microbench ladder`, `model`, `show`, `compare` and `index` work "
                          f"without one")


def git_revision() -> str | None:
    """The checkout's revision (with -dirty if tracked files changed), or MICROBENCH_GIT_REV
    when set: a copy of the tree without .git (as on a lent GPU machine) is told it that way."""
    if os.environ.get("MICROBENCH_GIT_REV"):
        return os.environ["MICROBENCH_GIT_REV"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=here)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, cwd=here).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_smi(fields: str) -> str | None:
    """The first GPU's line of `nvidia-smi --query-gpu=<fields>`, or None without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def environment(device=None) -> dict:
    """GPU, driver, clocks, library versions, git revision, the exact command, the date, and
    the CPUs the host has and this process may run on."""
    import torch
    env = dict(
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        git=git_revision(),
        gpu=None,
    )
    env["triton"] = _version("triton")
    env["cupy"] = _version("cupy")
    # the host's share of the machine: launch costs depend on the cores this process may run on
    # (NCCL's initialisation, among others, can narrow a thread's CPU affinity)
    env["host_cpus"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        env["cpus_allowed"] = len(os.sched_getaffinity(0))
    if torch.cuda.is_available():
        idx = torch.device(device or "cuda").index or 0
        p = torch.cuda.get_device_properties(idx)
        env.update(gpu=p.name, sm_count=p.multi_processor_count,
                   gpu_memory_bytes=p.total_memory, capability=f"{p.major}.{p.minor}")
        smi = nvidia_smi("driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,"
                         "power.limit,temperature.gpu")
        if smi:
            keys = ("driver", "clock_sm_mhz", "clock_mem_mhz", "clock_max_sm_mhz",
                    "clock_max_mem_mhz", "power_limit", "temperature_c")
            env.update(zip(keys, [v.strip() for v in smi.split(",")]))
    return env
