"""The PDL mode table (engine/pdl.py): keys, the default, what a decoder takes from it."""
import json

import pytest
import torch

from microbench.engine import pdl
from microbench.engine.shapes import PRESETS


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pdl, "CONFIG_DIR", tmp_path)
    pdl.load_table.cache_clear()
    yield tmp_path
    pdl.load_table.cache_clear()


def record(path, shape, modes, elt=2, command="microbench tune --ab P --vary pdl"):
    """Write `modes` ({batch: mode}) for `shape` into the table at `path`, as tune --ab does."""
    t = pdl.merge_per_batch(path, dict(device="Fake GPU", command=command),
                            pdl.shape_key(shape, elt), {b: dict(mode=m) for b, m in modes.items()})
    path.write_text(json.dumps(t))
    pdl.load_table.cache_clear()
    return t


def test_without_a_table_every_shape_launches_early(table_dir):
    assert pdl.measured(PRESETS["llama-8b"], 2, "Fake GPU") == ()
    assert pdl.choose(1, ()) == pdl.choose(64, ()) == pdl.DEFAULT == "early"


def test_a_recorded_choice_is_taken_for_its_shape_and_element_size_only(table_dir):
    path = pdl.table_path("Fake GPU")
    t = record(path, PRESETS["llama-8b"], {1: "off"})
    assert pdl.measured(PRESETS["llama-8b"], 2, "Fake GPU") == ((1, "off"),)
    assert pdl.measured(PRESETS["llama-8b"], 4, "Fake GPU") == ()        # float32: not measured
    assert pdl.measured(PRESETS["llama-1b"], 2, "Fake GPU") == ()
    assert pdl.measured(PRESETS["llama-8b"], 2, "Other GPU") == ()
    # a second run keeps the first's entries and says which run made each
    key = pdl.shape_key(PRESETS["llama-8b"], 2)
    t2 = record(path, PRESETS["llama-1b"], {1: "late"}, command="b")
    assert t["choices"][key]["1"]["run"] == 0 and t2["choices"][key]["1"]["mode"] == "off"
    assert len(t2["runs"]) == 2 and t2["choices"][pdl.shape_key(PRESETS["llama-1b"], 2)]["1"]["run"] == 1


def test_a_table_written_one_entry_per_shape_is_read_and_extended_per_batch(table_dir):
    """Tables from before the choice per batch size hold one entry per shape, measured at its
    "bs": a decoder reads it as that batch size's, and a new A/B adds batch sizes beside it."""
    path = pdl.table_path("Fake GPU")
    key = pdl.shape_key(PRESETS["opt-125m"], 2)
    path.write_text(json.dumps(dict(device="Fake GPU", runs=[{}], choices={
        key: dict(mode="late", preset="opt-125m", bs=1, run=0)})))
    assert pdl.measured(PRESETS["opt-125m"], 2, "Fake GPU") == ((1, "late"),)
    t = pdl.merge_per_batch(path, dict(command="b"), key, {16: dict(mode="off")})
    assert {b: e["mode"] for b, e in t["choices"][key].items()} == {"1": "late", "16": "off"}
    path.write_text(json.dumps(dict(choices={key: dict(mode="sometimes", bs=4)})))
    pdl.load_table.cache_clear()
    with pytest.raises(ValueError, match="bs 4 has no mode among early, late, off"):
        pdl.measured(PRESETS["opt-125m"], 2, "Fake GPU")


def test_a_batch_size_takes_its_own_choice_or_its_neighbours_shared_one_else_early():
    # early at 1 and 2 rows, late from 4 to 16, off at 64 (each rule's case in one table)
    choices = ((1, "early"), (2, "early"), (4, "late"), (8, "late"), (16, "late"), (64, "off"))
    got = {b: pdl.choose(b, choices) for b in (1, 2, 3, 4, 5, 8, 12, 16, 17, 32, 64, 65, 128)}
    assert got == {1: "early", 2: "early", 3: "early",     # 3: between early and late: default
                   4: "late", 5: "late", 8: "late", 12: "late", 16: "late",
                   17: "early", 32: "early",               # between late and off: default
                   64: "off", 65: "early", 128: "early"}   # above the largest measured: default
    assert pdl.choose(3, ((2, "late"), (4, "late"))) == "late"
    assert pdl.choose(1, ((2, "late"), (4, "late"))) == "early"  # below the smallest


def test_mode_names_round_trip():
    for name, arg in pdl.MODES.items():
        assert pdl.mode_name(arg) == name


def test_a_decoder_takes_the_table_only_when_asked_and_refuses_a_bad_mode():
    from microbench.engine.decoder import ToyDecoder
    shape = PRESETS["tiny"]
    # off CUDA nothing launches with PDL, so None means the wrappers' default
    assert ToyDecoder(shape, max_batch=2, max_seq=16, device="cpu").pdl_at(2) is True
    assert ToyDecoder(shape, max_batch=2, max_seq=16, device="cpu", pdl="late").pdl_at(1) == "late"
    with pytest.raises(ValueError, match="pdl must be True, False, 'early' or 'late'"):
        ToyDecoder(shape, max_batch=2, max_seq=16, device="cpu", pdl="sometimes")


def test_resolve_takes_the_table_per_batch_for_none_and_keeps_an_explicit_mode(table_dir,
                                                                              monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    record(pdl.table_path("Fake GPU"), PRESETS["llama-8b"], {1: "early", 4: "late", 16: "late"})
    cuda = torch.device("cuda")
    at = pdl.resolve(None, PRESETS["llama-8b"], torch.bfloat16, cuda)
    assert [at(b) for b in (1, 2, 4, 9, 16, 64)] == [True, True, "late", "late", "late", True]
    assert pdl.resolve(None, PRESETS["llama-8b"], torch.float32, cuda)(4) is True  # not measured
    assert pdl.resolve(None, PRESETS["llama-1b"], torch.bfloat16, cuda)(4) is True
    assert pdl.resolve(False, PRESETS["llama-8b"], torch.bfloat16, cuda)(4) is False
    assert pdl.resolve("late", PRESETS["llama-8b"], torch.bfloat16, cuda)(1) == "late"
    # a TP shard passes its full model's choices on as they are
    assert pdl.resolve(at, PRESETS["tiny"], torch.bfloat16, cuda) is at
    assert pdl.modes_at(at, [64, 1, 16, 4]) == {"early": [1, 64], "late": [4, 16]}
    assert pdl.modes_at(at, [1, 4], launches=lambda arg: False) == {"off": [1, 4]}


def test_a_decoder_asks_every_kernel_s_mode_at_its_step_s_batch_size():
    """Each Triton kernel of a step launches with the mode of that step's batch size: eager
    steps at 1 and 3 rows ask pdl_at for their own size only, so a graph captured at a size
    and the eager step at it launch alike."""
    from microbench.engine.decoder import ToyDecoder
    asked = []
    dec = ToyDecoder(PRESETS["tiny"], max_batch=4, max_seq=16, dtype=torch.float32, device="cpu",
                     pdl=lambda b: asked.append(b) or True)
    for bs in (1, 3):
        asked.clear()
        positions = torch.full((bs,), 5, dtype=torch.long)
        dec.step(torch.arange(bs), positions, torch.arange(bs))
        # embed, and per layer QKV, attention, O, gate/up, down; then the LM head
        assert set(asked) == {bs} and len(asked) >= 2 + 5 * PRESETS["tiny"].n_layers


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not a table"),
    ('{"choices": {"k": {"4": {"mode": "sometimes"}}}}', "entry k bs 4 has no mode among early, late, off"),
])
def test_a_broken_table_is_one_line_naming_the_file(table_dir, text, says):
    pdl.table_path("Fake GPU").write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        pdl.measured(PRESETS["llama-8b"], 2, "Fake GPU")
    assert str(pdl.table_path("Fake GPU")) in str(e.value) and "\n" not in str(e.value)


def test_a_bad_mode_name_is_refused():
    with pytest.raises(ValueError, match="pdl must be"):
        pdl.mode_name("sometimes")
