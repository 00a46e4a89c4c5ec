"""The wide matmuls' cuBLAS interface (engine/blas.py): the table, the row counts a choice
covers, the product, and what a decoder (bound, replayed, compiled) does with it."""
import json
import warnings

import pytest
import torch

from microbench.engine import blas
from microbench.engine.pdl import merge_per_batch, shape_key
from microbench.engine.shapes import PRESETS

L8 = PRESETS["llama-8b"]
TINY = PRESETS["tiny"]


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(blas, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    blas.load_table.cache_clear()
    yield tmp_path
    blas.load_table.cache_clear()


def record(shape, modes: dict, command="microbench tune --ab P --vary blas", device="Fake GPU"):
    path = blas.table_path(device)
    entries = {rows: dict(mode=m, bs=rows) for rows, m in modes.items()}
    path.write_text(json.dumps(merge_per_batch(path, dict(device=device, command=command),
                                                shape_key(shape, 2), entries)))


def on_cuda(shape=L8, dtype=torch.bfloat16):
    return blas.resolve(None, shape, dtype, torch.device("cuda"))


def test_without_a_table_every_row_count_takes_cublas(table_dir):
    assert [on_cuda()(r) for r in (17, 64, 1000)] == [blas.DEFAULT] * 3 == ["cublas"] * 3


def test_cublaslt_holds_only_between_measured_counts_that_both_chose_it(table_dir):
    record(L8, {32: "cublaslt", 64: "cublaslt", 128: "cublas", 256: "cublaslt"})
    choice = on_cuda()
    assert [choice(r) for r in (32, 33, 48, 64)] == ["cublaslt"] * 4
    assert choice(17) == choice(31) == "cublas"        # below the smallest measured count
    assert choice(65) == choice(127) == "cublas"       # between a cuBLASLt and a cuBLAS count
    assert choice(128) == "cublas" and choice(256) == "cublaslt"   # a lone count is its own range
    assert choice(200) == choice(257) == "cublas"


def test_a_choice_holds_for_its_shape_element_size_and_device_only(table_dir):
    record(L8, {64: "cublaslt"})
    assert on_cuda()(64) == "cublaslt"
    assert on_cuda(dtype=torch.float32)(64) == "cublas"          # float32: not measured
    assert on_cuda(PRESETS["llama-1b"])(64) == "cublas"
    record(L8, {64: "cublaslt"}, device="Other GPU")
    blas.load_table.cache_clear()
    assert blas.lt_spans(L8, 2, "Other GPU") == ((64, 64),)
    assert blas.lt_spans(L8, 2, "Third GPU") == ()
    assert blas.resolve(None, L8, torch.bfloat16, torch.device("cpu"))(64) == "cublas"


def test_a_later_run_keeps_other_counts_and_says_which_run_made_each(table_dir):
    record(L8, {32: "cublas", 64: "cublaslt"}, command="a")
    record(L8, {64: "cublas", 128: "cublaslt"}, command="b")
    t = json.loads(blas.table_path("Fake GPU").read_text())
    got = t["choices"][shape_key(L8, 2)]
    assert {r: (e["mode"], e["run"]) for r, e in got.items()} == {
        "32": ("cublas", 0), "64": ("cublas", 1), "128": ("cublaslt", 1)}
    assert [r["command"] for r in t["runs"]] == ["a", "b"]


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not a table"),
    ('{"choices": {"k": {"64": {"mode": "cublasxt"}}}}', "entry k rows 64 has no mode among cublas, cublaslt"),
])
def test_a_broken_table_is_one_line_naming_the_file(table_dir, text, says):
    blas.table_path("Fake GPU").write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        on_cuda()
    assert str(blas.table_path("Fake GPU")) in str(e.value) and "\n" not in str(e.value)


def test_an_explicit_mode_holds_everywhere_and_a_bad_one_is_refused():
    assert blas.resolve("cublaslt", L8, torch.bfloat16, torch.device("cpu"))(17) == "cublaslt"
    with pytest.raises(ValueError, match="blas must be one of cublas, cublaslt or None"):
        blas.resolve("cublasxt", L8, torch.bfloat16, torch.device("cpu"))


def test_the_choice_traces_under_torch_compile(table_dir):
    """The compile arm runs a decoder's step under torch.compile: the choice must be something
    dynamo traces in one graph (a cached function there broke the trace)."""
    record(L8, {32: "cublaslt", 64: "cublaslt"})
    choice = on_cuda()

    def step(x):
        return x * 2 if choice(x.shape[0]) == "cublaslt" else x

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.ones(48, 3)), torch.full((48, 3), 2.0))
    assert torch.equal(compiled(torch.ones(17, 3)), torch.ones(17, 3))


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
    assert launch.func is (torch.addmm if mode == "cublaslt" else torch.mm)
    launch()
    torch.testing.assert_close(y.float(), x.float() @ w.float().t(), **tol)
    assert not zeros.any()


def fake_table(monkeypatch, lt_rows=(19,)):
    """resolve as a table that chose cuBLASLt at `lt_rows` would make it (an explicit mode
    still holds everywhere)."""
    monkeypatch.setattr(blas, "resolve", lambda b, *a: (lambda rows: b) if b else
                        (lambda rows: "cublaslt" if rows in lt_rows else "cublas"))


@pytest.mark.parametrize("mode", [*blas.MODES, None])
def test_a_decoder_sends_its_wide_matmuls_through_its_choice_and_binds_them(mode, monkeypatch):
    """Every cuBLAS kernel of a wide step goes through the decoder's choice for its row count,
    plain and bound (the bound step records addmm for cuBLASLt, mm for cuBLAS); skinny steps
    never ask. None: a table that chose cuBLASLt at 19 rows only."""
    from microbench.engine import decoder as decoder_mod
    from microbench.engine.decoder import ToyDecoder
    fake_table(monkeypatch)
    dec = ToyDecoder(TINY, backend="triton", max_batch=20, max_seq=8, dtype=torch.float32,
                     device="cpu", blas=mode)
    mode = mode or "cublaslt"
    seen = []
    real = blas.linear
    monkeypatch.setattr(decoder_mod.blas_modes, "linear",
                        lambda x, w, m, *a: (seen.append(m), real(x, w, m, *a))[1])
    n_cublas = sum(k.launcher == "cublas" for k in dec.plan(19, 0))
    t = torch.arange(19) % TINY.vocab
    dec.step(t, torch.full((19,), 3), torch.arange(19))
    assert seen == [mode] * n_cublas and n_cublas > 0
    bound = dec.bind(19)
    mm = torch.addmm if mode == "cublaslt" else torch.mm
    assert sum(getattr(f, "func", None) is mm for f in bound.launches) == n_cublas
    seen.clear()
    dec.step(t[:3], torch.full((3,), 3), torch.arange(3))
    assert seen == []


def test_the_reference_backend_and_the_torch_twin_keep_cublas(monkeypatch):
    """Where the table chose cuBLASLt, a triton decoder follows it; the torch backend, and the
    torch twin of a decoder that follows it, keep cuBLAS unless told otherwise."""
    from microbench.bench.arms import torch_twin
    from microbench.engine.decoder import ToyDecoder
    fake_table(monkeypatch, lt_rows=(32,))
    kw = dict(max_batch=2, max_seq=8, device="cpu")
    dec = ToyDecoder(TINY, backend="triton", **kw)
    assert dec.blas(32) == "cublaslt" and torch_twin(dec).blas(32) == "cublas"
    assert ToyDecoder(TINY, backend="torch", **kw).blas(32) == "cublas"
    assert ToyDecoder(TINY, backend="torch", blas="cublaslt", **kw).blas(32) == "cublaslt"


@pytest.mark.parametrize("fns", ["op_fns", "layer_op_fns"])
def test_the_models_op_timings_go_through_the_decoders_choice(fns, monkeypatch):
    """The per-op timings the model's host costs and kernel lines come from time the wide
    matmuls through the decoder's own interface, not plain F.linear."""
    from microbench.bench import ops
    from microbench.engine import decoder as decoder_mod
    from microbench.engine.decoder import ToyDecoder
    dec = ToyDecoder(TINY, backend="triton", max_batch=20, max_seq=8, dtype=torch.float32,
                     device="cpu", blas="cublaslt")
    dec.fill_cache(4)
    seen = []
    real = blas.linear
    monkeypatch.setattr(decoder_mod.blas_modes, "linear",
                        lambda x, w, m, *a: (seen.append(m), real(x, w, m, *a))[1])
    got = ops.op_fns(dec, 19) if fns == "op_fns" else ops.layer_op_fns(dec, 19, 4)
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"):
        seen.clear()
        (got[name] if fns == "op_fns" else got[name](0))()
        assert seen == ["cublaslt"], name


@pytest.mark.gpu
def test_cublaslt_steps_bind_and_replay_what_they_compute_eagerly():
    """On the GPU, wide batches with every matmul through cuBLASLt: the bound step and a replay
    give the plain step's logits bitwise where the batch is captured as it is, and within bf16
    rounding where it is padded; the cuBLAS step matches within bf16 rounding; and the two
    interfaces launch different GEMM kernels (else the choice would be a choice of nothing)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.runner import GraphRunner

    def make(mode):
        dec = ToyDecoder(PRESETS["opt-125m"], max_batch=64, max_seq=64, device="cuda", blas=mode)
        dec.fill_cache(40)
        return dec

    dec, ref, plain = make("cublaslt"), make("cublaslt"), make("cublas")
    sizes = [24, 32, 64]
    runner = GraphRunner(dec, sizes, mode="full")
    runner.capture()
    for bs in (20, 32, 64):
        for ck, rk, pk in zip(dec.k_cache + dec.v_cache, ref.k_cache + ref.v_cache,
                              plain.k_cache + plain.v_cache):
            ck.copy_(rk)
            pk.copy_(rk)
        g = torch.Generator(device="cuda").manual_seed(bs)
        x = torch.stack([torch.randint(dec.shape.vocab, (bs,), generator=g, device="cuda"),
                         torch.randint(1, 40, (bs,), generator=g, device="cuda"),
                         torch.randperm(bs, generator=g, device="cuda")])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = runner.step(*x)
        want, other = ref.step(*x).clone(), plain.step(*x)
        if bs in sizes:
            assert torch.equal(got, want), (bs, (got.float() - want.float()).abs().max())
        else:
            torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.02)
        torch.testing.assert_close(other.float(), want.float(), atol=0.1, rtol=0.02)
        bound = ref.bind(bs).step_packed(x)
        torch.cuda.synchronize()
        assert torch.equal(bound, want), (bs, (bound.float() - want.float()).abs().max())
    runner.close()

    x = torch.randn(64, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 768, device="cuda", dtype=torch.bfloat16)
    zeros = torch.zeros(3072, device="cuda", dtype=torch.bfloat16)

    def gemm_kernels(mode):
        blas.linear(x, w, mode, zeros)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            blas.linear(x, w, mode, zeros)
            torch.cuda.synchronize()
        return {e.name for e in prof.events() if e.device_type == DeviceType.CUDA}
    a, b = gemm_kernels("cublas"), gemm_kernels("cublaslt")
    assert a and b and a != b, (a, b)
