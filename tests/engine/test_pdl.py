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


def write_table(path, shape, mode):
    t = pdl.merge_table(path, dict(device="Fake GPU", command="microbench tune --ab P --vary pdl"),
                        pdl.shape_key(shape, 2), dict(mode=mode))
    path.write_text(json.dumps(t))


def test_resolve_takes_the_table_for_none_and_keeps_an_explicit_mode(table_dir, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    write_table(pdl.table_path("Fake GPU"), PRESETS["llama-8b"], "off")
    cuda = torch.device("cuda")
    assert pdl.resolve(None, PRESETS["llama-8b"], torch.bfloat16, cuda) is False
    assert pdl.resolve(None, PRESETS["llama-8b"], torch.float32, cuda) is True   # not measured
    assert pdl.resolve(None, PRESETS["llama-1b"], torch.bfloat16, cuda) is True
    assert pdl.resolve(True, PRESETS["llama-8b"], torch.bfloat16, cuda) is True
    assert pdl.resolve("late", PRESETS["llama-8b"], torch.bfloat16, cuda) == "late"


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not a table"),
    ('{"choices": {"k": {"mode": "sometimes"}}}', "entry k has no mode among early, late, off"),
])
def test_a_broken_table_is_one_line_naming_the_file(table_dir, text, says):
    pdl.table_path("Fake GPU").write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        pdl.choose(PRESETS["llama-8b"], 2, "Fake GPU")
    assert str(pdl.table_path("Fake GPU")) in str(e.value) and "\n" not in str(e.value)


def test_a_bad_mode_name_is_refused():
    with pytest.raises(ValueError, match="pdl must be"):
        pdl.mode_name("sometimes")
