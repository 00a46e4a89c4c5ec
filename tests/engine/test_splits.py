"""The fused attention's split rule (engine/splits.py): the table, the batch sizes a choice
covers, and what a decoder (plain and bound) passes to the kernel."""
import json

import pytest
import torch

from microbench.engine import splits
from microbench.engine.pdl import merge_per_batch, shape_key
from microbench.engine.shapes import PRESETS

L1 = PRESETS["llama-1b"]
TINY = PRESETS["tiny"]


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    """A splits table folder, and a stand-in CUDA device: an H200's 132 SMs."""
    import sys
    rsa = sys.modules["microbench.kernels.rope_store_attention"]   # the module, not the function
    monkeypatch.setattr(splits, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(rsa, "sm_count", lambda index: 132)
    splits.load_table.cache_clear()
    yield tmp_path
    splits.load_table.cache_clear()


CUDA = torch.device("cuda")


def record(shape, modes: dict, max_seq=576, device="Fake GPU"):
    """Entries as `tune --ab P --vary splits` writes them: each with the two split counts it
    compared over a cache of max_seq positions."""
    path = splits.table_path(device)
    entries = {b: dict(mode=m, bs=b, splits=splits.split_pair(shape, b, max_seq, CUDA, torch.bfloat16))
               for b, m in modes.items()}
    path.write_text(json.dumps(merge_per_batch(path, dict(device=device), shape_key(shape, 2), entries)))
    splits.load_table.cache_clear()


def on_cuda(shape=L1, dtype=torch.bfloat16, max_seq=576):
    return splits.resolve(None, shape, dtype, CUDA, max_seq)


def test_the_two_counts_compared(table_dir):
    """llama-1b at context 512 (five 128-key tiles): the default launches five one-tile splits
    at bs 16 where three were wanted; at context 4096 both rules give three."""
    assert splits.split_pair(L1, 16, 576, CUDA, torch.bfloat16) == {"fill": 5, "capped": 3}
    assert splits.split_pair(L1, 24, 576, CUDA, torch.bfloat16) == {"fill": 3, "capped": 2}
    assert splits.split_pair(L1, 8, 576, CUDA, torch.bfloat16) == {"fill": 5, "capped": 5}
    assert splits.split_pair(L1, 16, 4104, CUDA, torch.bfloat16) == {"fill": 3, "capped": 3}


def test_capped_holds_at_exactly_the_measured_sizes_that_chose_it(table_dir):
    assert [on_cuda()(b) for b in (8, 16, 32)] == [False] * 3      # no table: the default
    record(L1, {8: "fill", 16: "capped", 24: "capped", 32: "fill"})
    choice = on_cuda()
    assert choice(16) and choice(24)
    # never between or around measured sizes: the split rule's effect is not monotone in batch
    assert not any(choice(b) for b in (8, 15, 17, 20, 23, 25, 32, 40))
    assert not on_cuda(dtype=torch.float32)(16)                  # float32: not measured
    assert not on_cuda(PRESETS["llama-8b"])(16)                  # another shape
    assert not splits.resolve(None, L1, torch.bfloat16, torch.device("cpu"), 576)(16)
    # a longer cache gives other counts than those compared: the default there
    assert not on_cuda(max_seq=4104)(16)
    # an entry without the counts compared (or with others) never applies
    path = splits.table_path("Fake GPU")
    table = json.loads(path.read_text())
    del table["choices"][shape_key(L1, 2)]["16"]["splits"]
    table["choices"][shape_key(L1, 2)]["24"]["splits"] = {"fill": 5, "capped": 3}
    path.write_text(json.dumps(table))
    splits.load_table.cache_clear()
    assert not on_cuda()(16) and not on_cuda()(24)


def test_an_explicit_mode_holds_everywhere_and_a_bad_one_is_refused():
    assert splits.resolve("capped", L1, torch.bfloat16, torch.device("cpu"), 576)(5) is True
    assert splits.resolve("fill", L1, torch.bfloat16, CUDA, 576)(16) is False
    with pytest.raises(ValueError, match="splits must be one of fill, capped"):
        splits.resolve("more", L1, torch.bfloat16, torch.device("cpu"), 576)


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
