"""Model shapes and dtype names: presets with real models' dimensions, validated once."""
import pytest
import torch

from microbench.engine.shapes import DTYPE_NAMES, PRESETS, ModelShape, check_dtype, torch_dtype


def test_bad_shapes():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelShape("bad", 1, 8, n_heads=3, n_kv_heads=2, head_dim=4, ffn=8, vocab=8)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelShape.from_name("gpt-9")


def test_presets_have_real_shapes():
    s = PRESETS["llama-8b"]
    assert (s.n_layers, s.hidden, s.n_heads, s.n_kv_heads, s.head_dim, s.ffn, s.vocab) == \
        (32, 4096, 32, 8, 128, 14336, 128256)
    assert PRESETS["opt-125m"].vocab == 50272 and PRESETS["llama-1b"].n_kv_heads == 8


def test_dtype_names_map_to_torch_dtypes():
    assert DTYPE_NAMES == ("float32", "float16", "bfloat16")
    assert [torch_dtype(n) for n in DTYPE_NAMES] == [torch.float32, torch.float16, torch.bfloat16]
    assert check_dtype("float16") == "float16"
    with pytest.raises(ValueError, match="--dtype: 'int8'; choose one of float32"):
        check_dtype("int8", "--dtype")
    with pytest.raises(ValueError, match="choose one of"):
        torch_dtype("float64")


def test_shapes_module_does_not_import_torch():
    """The CLI imports shapes for --help: torch loads only when a dtype is asked for."""
    import subprocess
    import sys
    code = ("import sys, microbench.engine.shapes as s; assert 'torch' not in sys.modules; "
            "s.torch_dtype('float16'); assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
