"""The fused attention's split rule (engine/splits.py): the table, the batch sizes a choice
covers, and what a decoder (plain and bound) passes to the kernel."""
import json

import pytest
import torch

from microbench.engine import splits
from microbench.engine.blas import merge_table
from microbench.engine.pdl import shape_key
from microbench.engine.shapes import PRESETS

L1 = PRESETS["llama-1b"]
TINY = PRESETS["tiny"]


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    splits.load_table.cache_clear()
    yield tmp_path
    splits.load_table.cache_clear()


def record(shape, modes: dict, device="Fake GPU"):
    path = splits.table_path(device)
    entries = {b: dict(mode=m, bs=b) for b, m in modes.items()}
    path.write_text(json.dumps(merge_table(path, dict(device=device), shape_key(shape, 2), entries)))
    splits.load_table.cache_clear()


def on_cuda(shape=L1, dtype=torch.bfloat16):
    return splits.resolve(None, shape, dtype, torch.device("cuda"))


def test_capped_holds_at_exactly_the_measured_sizes_that_chose_it(table_dir):
    assert [on_cuda()(b) for b in (8, 16, 32)] == [False] * 3      # no table: the default
    record(L1, {8: "fill", 16: "capped", 32: "fill", 48: "capped"})
    choice = on_cuda()
    assert choice(16) and choice(48)
    # never between or around measured sizes: the split rule's effect is not monotone in batch
    assert not any(choice(b) for b in (8, 15, 17, 24, 32, 40, 47, 49))
    assert not on_cuda(dtype=torch.float32)(16)                  # float32: not measured
    assert not on_cuda(PRESETS["llama-8b"])(16)                  # another shape
    assert not splits.resolve(None, L1, torch.bfloat16, torch.device("cpu"))(16)


def test_an_explicit_mode_holds_everywhere_and_a_bad_one_is_refused():
    assert splits.resolve("capped", L1, torch.bfloat16, torch.device("cpu"))(5) is True
    assert splits.resolve("fill", L1, torch.bfloat16, torch.device("cuda"))(16) is False
    with pytest.raises(ValueError, match="splits must be one of fill, capped"):
        splits.resolve("more", L1, torch.bfloat16, torch.device("cpu"))


def test_a_broken_table_is_one_line_naming_the_file(table_dir):
    path = splits.table_path("Fake GPU")
    path.write_text(json.dumps({"choices": {shape_key(L1, 2): {"16": {"mode": "half"}}}}))
    with pytest.raises(ValueError, match=r"attention splits table .* bs 16 has no mode among fill, capped"):
        on_cuda()


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", [None, "fill", "capped"])
def test_a_decoder_passes_its_choice_to_the_fused_attention_plain_and_bound(mode, monkeypatch):
    """Every fused attention call of a step asks the kernel for the decoder's choice at the
    step's batch size, in the plain step and in the launches a bound step records. None: a
    table that chose capped at 3 only."""
    from microbench import kernels
    from microbench.engine.decoder import ToyDecoder
    monkeypatch.setattr(splits, "resolve", lambda s, *a: (lambda b: s == "capped") if s else
                        (lambda b: b == 3))
    dec = ToyDecoder(TINY, backend="triton", max_batch=4, max_seq=40, dtype=torch.float32,
                     device="cpu", splits=mode)
    dec.fill_cache(20)
    seen = []
    real = kernels.rope_store_attention

    def spy(*a, **kw):
        seen.append(kw["capped"])
        return real(*a, **kw)
    monkeypatch.setattr(kernels, "rope_store_attention", spy)
    for b in (3, 2):
        seen.clear()
        t = torch.arange(b) % TINY.vocab
        dec.step(t, torch.full((b,), 20), torch.arange(b))
        want = mode == "capped" or (mode is None and b == 3)
        assert seen == [want] * TINY.n_layers
    seen.clear()
    bound = dec.bind(3)
    assert seen == [mode != "fill"] * TINY.n_layers and bound.launches
