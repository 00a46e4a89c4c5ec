"""The wide matmuls' cuBLAS interface (engine/blas.py): the table, its row buckets, the product."""
import json

import pytest
import torch

from microbench.engine import blas
from microbench.engine.pdl import shape_key
from microbench.engine.shapes import PRESETS

L8 = PRESETS["llama-8b"]


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(blas, "CONFIG_DIR", tmp_path)
    blas.load_table.cache_clear()
    yield tmp_path
    blas.load_table.cache_clear()


def record(path, shape, modes: dict, command="microbench tune --ab P --vary blas"):
    entries = {rows: dict(mode=m, bs=rows) for rows, m in modes.items()}
    path.write_text(json.dumps(blas.merge_table(path, dict(device="Fake GPU", command=command),
                                                shape_key(shape, 2), entries)))


def test_without_a_table_every_row_count_takes_cublas(table_dir):
    assert blas.choose(L8, 2, "Fake GPU", 64) == blas.DEFAULT == "cublas"


def test_a_choice_holds_for_its_row_bucket_shape_element_size_and_device_only(table_dir):
    record(blas.table_path("Fake GPU"), L8, {64: "cublaslt", 32: "cublas"})
    assert [blas.choose(L8, 2, "Fake GPU", r) for r in (33, 48, 64)] == ["cublaslt"] * 3
    assert blas.choose(L8, 2, "Fake GPU", 32) == "cublas"
    assert blas.choose(L8, 2, "Fake GPU", 65) == "cublas"         # bucket 128: not measured
    assert blas.choose(L8, 4, "Fake GPU", 64) == "cublas"         # float32: not measured
    assert blas.choose(PRESETS["llama-1b"], 2, "Fake GPU", 64) == "cublas"
    assert blas.choose(L8, 2, "Other GPU", 64) == "cublas"


def test_a_later_run_keeps_other_buckets_and_says_which_run_made_each(table_dir):
    path = blas.table_path("Fake GPU")
    record(path, L8, {32: "cublas", 64: "cublaslt"}, command="a")
    record(path, L8, {64: "cublas", 128: "cublaslt"}, command="b")
    t = json.loads(path.read_text())
    got = t["choices"][shape_key(L8, 2)]
    assert {b: (e["mode"], e["run"]) for b, e in got.items()} == {
        "32": ("cublas", 0), "64": ("cublas", 1), "128": ("cublaslt", 1)}
    assert [r["command"] for r in t["runs"]] == ["a", "b"]


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not a table"),
    ('{"choices": {"k": {"64": {"mode": "cublasxt"}}}}', "entry k rows 64 has no mode among cublas, cublaslt"),
])
def test_a_broken_table_is_one_line_naming_the_file(table_dir, text, says):
    blas.table_path("Fake GPU").write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        blas.choose(L8, 2, "Fake GPU", 64)
    assert str(blas.table_path("Fake GPU")) in str(e.value) and "\n" not in str(e.value)


def test_resolve_takes_the_table_on_cuda_and_an_explicit_mode_anywhere(table_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    record(blas.table_path("Fake GPU"), L8, {64: "cublaslt"})
    on_cuda = blas.resolve(None, L8, torch.bfloat16, torch.device("cuda"))
    assert (on_cuda(64), on_cuda(17)) == ("cublaslt", "cublas")
    assert blas.resolve(None, L8, torch.bfloat16, torch.device("cpu"))(64) == "cublas"
    assert blas.resolve("cublaslt", L8, torch.bfloat16, torch.device("cpu"))(17) == "cublaslt"
    with pytest.raises(ValueError, match="blas must be one of cublas, cublaslt or None"):
        blas.resolve("cublasxt", L8, torch.bfloat16, torch.device("cpu"))


@pytest.mark.parametrize("mode", blas.MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_is_the_product_and_its_recorded_launch_writes_the_same_output(mode, dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(19, 48, generator=g).to(dtype)
    w = torch.randn(37, 48, generator=g).to(dtype)
    zeros = torch.zeros(64, dtype=dtype)
    rec = []
    y = blas.linear(x, w, mode, zeros, rec)
    want = x.float() @ w.float().t()
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=2e-2)
    torch.testing.assert_close(y.float(), want, **tol)
    x.copy_(torch.randn(19, 48, generator=g))       # new inputs in place, as a bound step has
    (launch,) = rec
    launch()
    torch.testing.assert_close(y.float(), x.float() @ w.float().t(), **tol)
    assert not zeros.any()


def test_the_choice_traces_under_torch_compile(table_dir, monkeypatch):
    """The compile arm runs a decoder's step under torch.compile: the choice must be something
    dynamo traces in one graph (a cached function there broke the trace)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    record(blas.table_path("Fake GPU"), L8, {64: "cublaslt"})
    choice = blas.resolve(None, L8, torch.bfloat16, torch.device("cuda"))

    def step(x):
        return x * 2 if choice(x.shape[0]) == "cublaslt" else x

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    x = torch.ones(64, 3)
    assert torch.equal(compiled(x), 2 * x)
    assert torch.equal(compiled(torch.ones(17, 3)), torch.ones(17, 3))


def test_the_reference_backend_keeps_cublas_unless_told(monkeypatch):
    from microbench.engine import decoder as decoder_mod
    from microbench.engine.decoder import ToyDecoder
    asked = []
    real = blas.resolve
    monkeypatch.setattr(decoder_mod.blas_modes, "resolve",
                        lambda b, *a: (asked.append(b), real(b, *a))[1])
    kw = dict(max_batch=2, max_seq=8, device="cpu")
    ToyDecoder(PRESETS["tiny"], backend="torch", **kw)
    ToyDecoder(PRESETS["tiny"], backend="triton", **kw)
    dec = ToyDecoder(PRESETS["tiny"], backend="torch", blas="cublaslt", **kw)
    assert asked == ["cublas", None, "cublaslt"] and dec.blas(32) == "cublaslt"
