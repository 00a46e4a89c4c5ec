"""The sweep footer's bandwidth by plan family (report/tables.py family_bw_lines) and its
record in the run schema, from a synthetic run."""
import pytest

from microbench.bench.bandwidth import family_bandwidth
from microbench.engine.plan import Kernel
from microbench.report.schema import RunFileError, validate_run
from microbench.report.tables import family_bw_lines, sweep_table
from tests.report.runs import sweep_run

COPY = 4e12


def run_with_families(pdl=False):
    kernels = [Kernel("qkv_proj:skinny", "triton", 8_000_000, 0),
               Kernel("decode_attention", "triton", 2_000_000, 0)]
    breakdown = {"matmul": dict(n=2, us=4.0), "decode_attention": dict(n=1, us=1.0),
                 "other": dict(n=1, us=0.5)}
    return sweep_run(launch=None, decoder=dict(fusion=2, fast_rows=1, pdl=pdl),
                     graph_family_bw={"1": family_bandwidth(breakdown, kernels, COPY)})


def test_footer_line_per_batch_largest_time_first():
    run = run_with_families()
    (line,) = family_bw_lines(run)
    assert line.startswith("by plan family at bs 1: skinny 8.0 MB in 4 us = 50% of copy "
                           "(+2 us over its 2 at copy); attention 2.0 MB in 1 us = 50% of copy")
    assert line.endswith("other 0 us (not in the plan)")
    assert line in sweep_table(run)


def test_footer_says_pdl_runs_timed_these_kernels_without_it():
    (line,) = family_bw_lines(run_with_families(pdl=True))
    assert line.endswith("kernels timed in a replay without PDL, each alone")


def test_schema_checks_the_record():
    run = run_with_families()
    validate_run(run, "run.json")
    run["graph_family_bw"]["1"]["skinny"]["us"] = "slow"
    with pytest.raises(RunFileError, match="graph_family_bw.1.skinny.us"):
        validate_run(run, "run.json")
    run["graph_family_bw"]["1"] = 3
    with pytest.raises(RunFileError, match="graph_family_bw.1"):
        validate_run(run, "run.json")
