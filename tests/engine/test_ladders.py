"""Capture-size ladders: vLLM's, SGLang's and powers of two, and the ladder strings the CLI takes."""
import pytest

from microbench.engine.ladders import (parse_int_list, pow2_capture_sizes, resolve_ladder,
                                       sglang_capture_sizes, vllm_capture_sizes)


def test_vllm_default_ladder():
    sizes = vllm_capture_sizes()
    # cap = min(2 * 256, 512) = 512: 1, 2, 4, 8..248 by 8, 256..512 by 16
    assert sizes[:5] == [1, 2, 4, 8, 16]
    assert sizes[-3:] == [480, 496, 512]
    assert 248 in sizes and 252 not in sizes and 264 not in sizes and 272 in sizes
    assert len(sizes) == 3 + 31 + 17
    assert sizes == sorted(set(sizes))


def test_vllm_single_sequence_collapses_to_two_sizes():
    assert vllm_capture_sizes(max_num_seqs=1) == [1, 2]
    assert vllm_capture_sizes(max_num_seqs=2) == [1, 2, 4]
    assert vllm_capture_sizes(max_num_seqs=4) == [1, 2, 4, 8]


@pytest.mark.parametrize("fix, last", [(False, 688), (True, 700)])
def test_vllm_off_stride_maximum(fix, last):
    sizes = vllm_capture_sizes(max_num_seqs=512, max_num_batched_tokens=700,
                               max_capture_size=1024, off_stride_fix=fix)
    assert sizes[-1] == last
    assert (700 in sizes) is fix
    assert sizes[-2] == (688 if fix else 672)


def test_vllm_on_stride_maximum_is_not_duplicated():
    a = vllm_capture_sizes(max_num_seqs=512, max_num_batched_tokens=768, max_capture_size=1024)
    b = vllm_capture_sizes(max_num_seqs=512, max_num_batched_tokens=768, max_capture_size=1024,
                           off_stride_fix=False)
    assert a == b and a[-1] == 768


def test_vllm_pr_case_257():
    # the case vLLM's PR added to its own tests: 257 tokens under a cap of 2048
    sizes = vllm_capture_sizes(max_num_seqs=1024, max_num_batched_tokens=257, max_capture_size=2048)
    assert sizes[-1] == 257 and sizes[-2] == 256


def test_vllm_cap_clipped_by_batched_tokens():
    sizes = vllm_capture_sizes(max_num_seqs=256, max_num_batched_tokens=100)
    assert sizes[-1] == 100 and 96 in sizes and 104 not in sizes


def test_sglang_ladder():
    s = sglang_capture_sizes(160)
    assert s[:7] == [1, 2, 4, 8, 12, 16, 24] and s[-1] == 160
    s = sglang_capture_sizes(600)
    assert 256 in s and 264 not in s and 272 in s and 496 in s and 512 in s
    assert 528 not in s and 544 in s and 576 in s and s[-1] == 600
    assert sglang_capture_sizes(1) == [1]
    assert sglang_capture_sizes(10) == [1, 2, 4, 8, 10]


def test_pow2_ladder():
    assert pow2_capture_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert pow2_capture_sizes(37) == [1, 2, 4, 8, 16, 32, 37]
    assert pow2_capture_sizes(1) == [1]


@pytest.mark.parametrize("bad", [0, -1, "4", 2.5])
def test_ladders_reject_bad_values(bad):
    for fn in (sglang_capture_sizes, pow2_capture_sizes):
        with pytest.raises(ValueError, match="max_bs"):
            fn(bad)
    with pytest.raises(ValueError, match="max_num_seqs"):
        vllm_capture_sizes(max_num_seqs=bad)


def test_parse_int_list():
    assert parse_int_list("1, 2,4") == [1, 2, 4]
    for bad in ("", " ", "1,,2", "a", "1,-2", "0", "1.5"):
        with pytest.raises(ValueError):
            parse_int_list(bad)


def test_resolve_ladder():
    assert resolve_ladder("vllm", 64)[-1] == 128        # vLLM caps at 2 * max_num_seqs
    assert resolve_ladder("pow2", 64)[-1] == 64
    assert resolve_ladder("16,1,4,1", 64) == [1, 4, 16]
