"""The PDL mode table (engine/pdl.py): keys, the default, what a decoder takes from it."""
import json

import pytest

from microbench.engine import pdl
from microbench.engine.shapes import PRESETS


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pdl, "CONFIG_DIR", tmp_path)
    pdl.load_table.cache_clear()
    yield tmp_path
    pdl.load_table.cache_clear()


def test_without_a_table_every_shape_launches_early(table_dir):
    assert pdl.choose(PRESETS["llama-8b"], 2, "Fake GPU") == pdl.DEFAULT == "early"


def test_a_recorded_choice_is_taken_for_its_shape_and_element_size_only(table_dir):
    path = pdl.table_path("Fake GPU")
    key = pdl.shape_key(PRESETS["llama-8b"], 2)
    t = pdl.merge_table(path, dict(device="Fake GPU", command="microbench tune --ab llama-8b --vary pdl"),
                        key, dict(mode="off", preset="llama-8b"))
    path.write_text(json.dumps(t))
    assert pdl.choose(PRESETS["llama-8b"], 2, "Fake GPU") == "off"
    assert pdl.choose(PRESETS["llama-8b"], 4, "Fake GPU") == "early"       # float32: not measured
    assert pdl.choose(PRESETS["llama-1b"], 2, "Fake GPU") == "early"
    assert pdl.choose(PRESETS["llama-8b"], 2, "Other GPU") == "early"
    # a second run keeps the first's entries and says which run made each
    t2 = pdl.merge_table(path, dict(device="Fake GPU", command="b"), pdl.shape_key(PRESETS["llama-1b"], 2),
                         dict(mode="late", preset="llama-1b"))
    assert t2["choices"][key]["mode"] == "off" and t2["choices"][key]["run"] == 0
    assert len(t2["runs"]) == 2 and t2["choices"][pdl.shape_key(PRESETS["llama-1b"], 2)]["run"] == 1


def test_mode_names_round_trip():
    for name, arg in pdl.MODES.items():
        assert pdl.mode_name(arg) == name


def test_a_decoder_takes_the_table_only_when_asked_and_refuses_a_bad_mode():
    from microbench.engine.decoder import ToyDecoder
    shape = PRESETS["tiny"]
    # off CUDA nothing launches with PDL, so None means the wrappers' default
    assert ToyDecoder(shape, max_batch=2, max_seq=16, device="cpu").pdl is True
    assert ToyDecoder(shape, max_batch=2, max_seq=16, device="cpu", pdl="late").pdl == "late"
    with pytest.raises(ValueError, match="pdl must be True, False, 'early' or 'late'"):
        ToyDecoder(shape, max_batch=2, max_seq=16, device="cpu", pdl="sometimes")
