"""The sweep's config (bench/sweep_config.py): full_max_size, full_and_piecewise's cap on its
full pass, is accepted only with that mode and within the batch limit, and is recorded in the
run's config as the schema types it."""
import pytest

from microbench.bench.sweep_config import SweepConfig
from microbench.engine.shapes import MAX_BATCH
from microbench.report.schema import RunFileError, SweepConfigRecord, validate_run
from tests.report.runs import sweep_run


def test_full_max_size_with_full_and_piecewise():
    cfg = SweepConfig(mode="full_and_piecewise", full_max_size=8).validate()
    assert cfg.to_dict()["full_max_size"] == 8
    assert SweepConfig().validate().full_max_size is None


@pytest.mark.parametrize("kw, why", [
    (dict(full_max_size=8), "only with --mode full_and_piecewise, got --mode full"),
    (dict(mode="piecewise", full_max_size=8), "got --mode piecewise"),
    (dict(mode="full_and_piecewise", full_max_size=0), "out of range"),
    (dict(mode="full_and_piecewise", full_max_size=MAX_BATCH + 1), "out of range"),
])
def test_full_max_size_rejected(kw, why):
    with pytest.raises(ValueError, match=f"^--full-max-size: .*{why}"):
        SweepConfig(**kw).validate()


def test_the_schema_types_full_max_size():
    run = sweep_run()
    run["config"]["full_max_size"] = 8
    assert validate_run(run, "r").config == SweepConfigRecord(**run["config"])
    run["config"]["full_max_size"] = "8"
    with pytest.raises(RunFileError, match="'config.full_max_size' is a string"):
        validate_run(run, "r")
