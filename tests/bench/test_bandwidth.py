"""Where a replay's GPU time goes against the copy bandwidth (bench/bandwidth.py), on synthetic
profiler breakdowns and the plan's own kernels."""
import pytest

from microbench.bench.bandwidth import family_bandwidth, matmul_family, plan_bytes
from microbench.engine.plan import Fusion, Kernel, is_skinny, step_kernels
from microbench.engine.shapes import PRESETS

COPY = 4e12   # bytes/s


def ks(*spec):
    return [Kernel(name, launcher, nbytes, 0) for name, launcher, nbytes in spec]


def test_families_bytes_time_and_shares():
    kernels = ks(("embedding", "triton", 1_000), ("qkv_proj:skinny", "triton", 4_000_000),
                 ("decode_attention", "triton", 2_000_000), ("o_proj:skinny", "triton", 4_000_000))
    breakdown = {"embedding": dict(n=1, us=1.0), "matmul": dict(n=2, us=4.0),
                 "decode_attention": dict(n=1, us=1.0), "other": dict(n=1, us=0.5)}
    out = family_bandwidth(breakdown, kernels, COPY)
    assert set(out) == {"small", "skinny", "attention", "other"}
    sk = out["skinny"]
    assert sk["bytes"] == 8_000_000 and sk["planned"] == 2 and sk["n"] == 2 and sk["us"] == 4.0
    assert sk["bytes_per_s"] == pytest.approx(2e12)             # 8 MB in 4 us
    assert sk["copy_share"] == pytest.approx(0.5)
    assert sk["us_at_copy"] == pytest.approx(2.0) and sk["us_over"] == pytest.approx(2.0)
    assert out["attention"]["copy_share"] == pytest.approx(0.5)  # 2 MB in 1 us
    assert out["small"]["bytes"] == 1_000 and out["small"]["us"] == 1.0
    # kernels the plan does not list keep their time, with no bytes and no share
    assert out["other"] == dict(bytes=None, us=0.5, n=1, planned=0, bytes_per_s=None,
                                copy_share=None, us_at_copy=None, us_over=None)


def test_profiled_families_map_to_the_plans():
    """The profiler's finer families fold into the plan's: attention with its reduce, the
    norms, rope, swiglu and embedding into small; matmuls into cuBLAS at a wide batch."""
    kernels = ks(("rmsnorm", "triton", 100), ("qkv_proj", "cublas", 1_000),
                 ("decode_attention", "triton", 500), ("attention_reduce", "triton", 50),
                 ("swiglu", "triton", 30))
    breakdown = {"rmsnorm": dict(n=1, us=1.0), "swiglu": dict(n=1, us=2.0),
                 "matmul": dict(n=1, us=3.0), "decode_attention": dict(n=1, us=4.0),
                 "attention_reduce": dict(n=1, us=5.0)}
    out = family_bandwidth(breakdown, kernels, None)
    assert {f: (v["bytes"], v["us"], v["n"]) for f, v in out.items()} == {
        "small": (130, 3.0, 2), "cublas": (1_000, 3.0, 1), "attention": (550, 9.0, 2)}
    # without a copy bandwidth: rates, no shares
    assert out["cublas"]["bytes_per_s"] == pytest.approx(1_000 / 3e-6)
    assert out["cublas"]["copy_share"] is None and out["cublas"]["us_over"] is None


def test_a_family_with_no_time_has_no_rate():
    out = family_bandwidth({}, ks(("swiglu", "triton", 30)), COPY)
    assert out["small"]["us"] == 0.0 and out["small"]["bytes_per_s"] is None
    assert out["small"]["us_at_copy"] == pytest.approx(30 / COPY * 1e6)


def test_both_matmul_families_share_the_profiled_matmuls():
    kernels = ks(("qkv_proj:skinny", "triton", 300), ("lm_head", "cublas", 700))
    assert matmul_family(plan_bytes(kernels)) == "skinny+cublas"
    out = family_bandwidth({"matmul": dict(n=2, us=1.0)}, kernels, COPY)
    assert list(out) == ["skinny+cublas"] and out["skinny+cublas"]["bytes"] == 1_000
    assert out["skinny+cublas"]["planned"] == 2


@pytest.mark.parametrize("bs", [1, 64])
def test_the_plans_bytes_are_all_counted(bs):
    """Over a real plan, the families' bytes add up to the step's."""
    kernels = step_kernels(PRESETS["llama-1b"], bs, 512, 2, fusion=Fusion.ATTENTION)
    out = family_bandwidth({"matmul": dict(n=1, us=100.0)}, kernels, COPY)
    assert sum(v["bytes"] for v in out.values()) == sum(k.bytes for k in kernels)
    assert ("skinny" if is_skinny(Fusion.ATTENTION, bs) else "cublas") in out


def test_every_profiled_family_has_its_plan_family():
    """The profiler's family names this module maps: matmul, and every attention family."""
    from microbench.bench.bandwidth import ATTENTION, MATMUL
    from microbench.bench.profile import KERNEL_FAMILIES
    fams = {f for _, f in KERNEL_FAMILIES}
    assert MATMUL in fams and set(ATTENTION) <= fams
    assert {f for f in fams if "attention" in f} <= set(ATTENTION)


@pytest.mark.gpu
def test_kernels_without_pdl_time_the_same_kernels():
    """On a GPU: the PDL-free replay runs the plan's kernels (the same count as the decoder's
    own replay) and leaves the decoder's launch flag as it was."""
    import torch

    from microbench.bench.bandwidth import kernels_without_pdl
    from microbench.bench.inputs import packed, step_inputs
    from microbench.bench.profile import kernel_breakdown, profile_kernels
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.runner import GraphRunner
    dec = ToyDecoder(PRESETS["tiny"], max_batch=4, max_seq=64, dtype=torch.bfloat16,
                     device="cuda", pdl=True)
    dec.fill_cache(40)
    runner = GraphRunner(dec, [4])
    runner.capture()
    x = packed(*step_inputs(dec.shape.vocab, 3, 40, "cuda"))
    with_pdl = profile_kernels(lambda: runner.step_packed(x))
    runner.close()
    alone = kernels_without_pdl(dec, 3, 4, "full", 40)
    counts = lambda ks: {f: d["n"] for f, d in kernel_breakdown(ks).items()}
    assert dec.pdl_at(4) is True and counts(alone) == counts(with_pdl)
    assert all(us > 0 for _, us in alone)
