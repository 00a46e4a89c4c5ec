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


# ---- the model options, validated once for every config that builds the decoder --------------
@pytest.mark.parametrize("kw, message", [
    (dict(preset="gpt-9"), r"^--preset: unknown preset 'gpt-9'; choose one of "),
    (dict(context=0), r"^--context: 0 is out of range; 1\.\."),
    (dict(dtype="fp8"), r"^--dtype: 'fp8'; choose one of "),
])
def test_sweep_startup_and_reproduce_check_the_model_options_in_one_place(monkeypatch, kw, message):
    from microbench.bench import model_options, reproduce, startup, sweep_config
    configs = (sweep_config.SweepConfig, startup.StartupConfig, reproduce.ReproduceConfig)
    for cfg in configs:
        with pytest.raises(ValueError, match=message):
            cfg(**kw).validate()
    good = dict(preset="opt-125m", context=512, dtype="bfloat16")
    with pytest.raises(ValueError, match=message):
        model_options.check_model_options(**dict(good, **kw))
    seen = []
    spy = lambda preset, context, dtype: seen.append((preset, context, dtype))
    for module in (sweep_config, startup, reproduce):
        monkeypatch.setattr(module, "check_model_options", spy)
    for cfg in configs:
        cfg(preset="tiny", context=64, dtype="float16").validate()
    assert seen == [("tiny", 64, "float16")] * 3
