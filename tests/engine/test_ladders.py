"""Capture-size ladders: vLLM's, SGLang's and powers of two, and the ladder strings the CLI takes."""
import pytest

from microbench.engine.ladders import (ladder_spec, parse_int_list, pow2_capture_sizes,
                                       resolve_ladder, sglang_capture_sizes, sglang_default_max_bs,
                                       vllm_capture_sizes)


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
    assert 528 not in s and 544 in s and s[-1] == 576     # 600 is off the 32-stride: not captured
    assert sglang_capture_sizes(1) == [1]
    assert sglang_capture_sizes(10) == [1, 2, 4, 8]
    # the runner adds the request pool's size when the list goes past it
    assert sglang_capture_sizes(256, max_running_requests=10) == [1, 2, 4, 8, 10]
    assert sglang_capture_sizes(256, max_running_requests=600)[-1] == 256


def test_sglang_speculative_and_no_padding():
    s = sglang_capture_sizes(300, speculative=True)
    assert s[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16]
    assert 32 in s and 34 not in s and 36 not in s and 40 in s and 44 in s and 64 in s
    assert 68 not in s and 72 in s and 256 in s and 264 not in s and 272 in s and s[-1] == 288
    assert sglang_capture_sizes(5, disable_padding=True) == [1, 2, 3, 4, 5]
    assert sglang_capture_sizes(5, speculative=True, disable_padding=True) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("gib, tp, want", [(16, 1, 8), (24, 1, 48), (24, 4, 160), (48, 1, 32),
                                           (40, 8, 160), (80, 1, 256), (80, 4, 512),
                                           (141, 1, 256), (141, 8, 512), (192, 1, 512),
                                           (None, 1, 160)])
def test_sglang_default_max_bs(gib, tp, want):
    # handle_gpu_memory_settings: L4 (24 GB), L40S/A100-40GB, H100/A100-80GB, H200, B200
    assert sglang_default_max_bs(gib, tp) == want


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
    # the sweep's sglang ladder: sized to the largest batch, which is on it (as before)
    for m in (10, 37, 64, 160, 300):
        assert resolve_ladder("sglang", m) == sorted(
            {b for b in sglang_capture_sizes(512) if b <= m} | {m})


def test_ladder_specs_round_trip():
    spec = ladder_spec("vllm", num_speculative_tokens=2, performance_mode="interactivity",
                       blackwell=False, max_num_batched_tokens=None)
    assert spec == "vllm:num_speculative_tokens=2,performance_mode=interactivity"
    assert resolve_ladder(spec, 16) == vllm_capture_sizes(
        max_num_seqs=16, num_speculative_tokens=2, performance_mode="interactivity")
    assert ladder_spec("vllm", num_speculative_tokens=0, performance_mode="balanced") == "vllm"
    spec = ladder_spec("sglang", speculative=True, disable_padding=False)
    assert spec == "sglang:speculative=1"
    assert resolve_ladder(spec, 20) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20]
    assert resolve_ladder("sglang:max_bs=8", 20) == [1, 2, 4, 8]
    assert resolve_ladder("vllm:blackwell=1", 512)[-1] == 1024
    for bad in ("vllm:x=1", "vllm:num_speculative_tokens", "vllm:num_speculative_tokens=a",
                "sglang:max_bs=0"):
        with pytest.raises(ValueError):
            resolve_ladder(bad, 8)


# vLLM's own cases, tests/compile/test_config.py::test_cudagraph_sizes_post_init: (explicit
# sizes, max_cudagraph_capture_size, max_num_batched_tokens) -> the final max capture size, with
# max_num_seqs = min(max_num_batched_tokens, 128) as that test builds its engine. The cases with
# cudagraph_mode NONE or sequence parallelism are outside this function.
@pytest.mark.parametrize("sizes, max_size, tokens, want", [
    (None, None, 2048, 256),
    ([1, 2, 4], 4, 2048, 4),
    ([1, 2, 4], 8, 2048, ValueError),
    ([1, 256], None, 2048, 256),
    (None, 257, 2048, 256),          # truncated to the nearest multiple of 8 or 16
    (None, 2048, 257, 257),          # max_num_batched_tokens within the cap: captured off-stride
    ([1, 2, 4, 15], None, 2048, 15),
    ([1, 2, 4, 15], None, 8, 4),     # limited by max_num_batched_tokens
    ([], None, 2048, ValueError),
    (None, 0, 2048, ValueError),
])
def test_vllm_upstream_post_init_cases(sizes, max_size, tokens, want):
    kw = dict(max_num_seqs=min(tokens, 128), max_num_batched_tokens=tokens,
              max_capture_size=max_size, capture_sizes=sizes)
    if want is ValueError:
        with pytest.raises(ValueError):
            vllm_capture_sizes(**kw)
    else:
        assert vllm_capture_sizes(**kw)[-1] == want


def test_vllm_explicit_list_filtered_by_batched_tokens():
    assert vllm_capture_sizes(capture_sizes=[16, 1, 2, 4, 8, 4], max_num_batched_tokens=8) == [1, 2, 4, 8]
    assert vllm_capture_sizes(capture_sizes=[1, 2, 4, 8, 16]) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="capture_sizes"):
        vllm_capture_sizes(capture_sizes=[1, 0])


# tests/compile/test_config.py::test_default_cudagraph_capture_size_respects_platform_ceiling:
# (max_num_seqs, num_speculative_tokens) -> whether the widest uniform decode batch is captured;
# the ceiling min(max_num_seqs * q * 2, 512) is always the largest size.
@pytest.mark.parametrize("seqs, spec, widest", [
    (8, 0, True), (32, 0, True), (64, 7, True), (256, 1, True), (32, 16, False), (64, 16, False),
    (128, 16, False), (256, 24, False), (33, 16, False), (24, 16, True)])
def test_vllm_speculative_ceiling(seqs, spec, widest):
    q = 1 + spec
    sizes = vllm_capture_sizes(max_num_seqs=seqs, max_num_batched_tokens=32768,
                               num_speculative_tokens=spec)
    assert sizes[-1] == min(seqs * q * 2, 512)
    assert (seqs * q in sizes) is widest


def test_vllm_speculative_sizes_bounded():
    # test_default_cudagraph_capture_sizes_keep_all_sizes_bounded: 512 sequences, 16 draft tokens
    sizes = vllm_capture_sizes(max_num_seqs=512, max_num_batched_tokens=32768,
                               num_speculative_tokens=16)
    grid = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16))
    assert sizes == sorted(set(grid + [n * 17 for n in grid + [512] if n * 17 <= 512]))
    # test_single_speculative_token_does_not_raise_default_capture_size; ..._caps_tokens;
    # ..._still_clamped_by_token_budget
    s = vllm_capture_sizes(max_num_seqs=300, max_num_batched_tokens=10**6, num_speculative_tokens=1)
    assert s[-1] == 512 and 600 not in s
    s = vllm_capture_sizes(max_num_seqs=1024, max_num_batched_tokens=10**6, num_speculative_tokens=16)
    assert s[-1] == 512 and all(x <= 512 for x in s)
    s = vllm_capture_sizes(max_num_seqs=32, max_num_batched_tokens=512, num_speculative_tokens=16)
    assert s[-1] == 512 and 544 not in s


@pytest.mark.parametrize("seqs", [8, 32, 256, 300, 512, 600, 1024, 2048])
def test_vllm_unchanged_without_speculation(seqs):
    # test_default_cudagraph_capture_size_unchanged_without_speculation
    assert vllm_capture_sizes(max_num_seqs=seqs, max_num_batched_tokens=10**6)[-1] == min(2 * seqs, 512)


@pytest.mark.parametrize("blackwell, want", [(False, 512), (True, 1024)])
def test_vllm_blackwell_default(blackwell, want):
    # test_blackwell_cudagraph_default: 512 sequences, 2048 batched tokens
    assert vllm_capture_sizes(max_num_seqs=512, max_num_batched_tokens=2048,
                              blackwell=blackwell)[-1] == want


def test_vllm_interactivity():
    s = vllm_capture_sizes(performance_mode="interactivity")
    assert s[:32] == list(range(1, 33)) and 33 not in s and 40 in s and s[-1] == 512
    assert vllm_capture_sizes(max_num_seqs=4, performance_mode="interactivity") == list(range(1, 9))
    assert vllm_capture_sizes(performance_mode="throughput") == vllm_capture_sizes()
    with pytest.raises(ValueError, match="performance_mode"):
        vllm_capture_sizes(performance_mode="fast")
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        vllm_capture_sizes(num_speculative_tokens=-1)


# The `ladder` and `sweep` commands' engine options (the CLI lives in microbench.cli; these
# tests stay beside the rules they expose).
def _cli(*args):
    from click.testing import CliRunner

    from microbench.cli import main
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def test_cli_ladder_explicit_list_filtered_by_batched_tokens():
    code, out = _cli("ladder", "--sizes", "1,2,4,8,16", "--max-num-batched-tokens", "8",
                     "--bs", "16", "--json")
    assert code == 0 and '"ladder": [1, 2, 4, 8]' in out and '"padded": null' in out


def test_cli_ladder_engine_options():
    code, out = _cli("ladder", "--max-num-seqs", "16", "--num-speculative-tokens", "2",
                     "--performance-mode", "interactivity", "--json")
    want = vllm_capture_sizes(max_num_seqs=16, num_speculative_tokens=2,
                              performance_mode="interactivity")
    assert code == 0 and f'"ladder": {want}' in out
    code, out = _cli("ladder", "--engine", "sglang", "--gpu-mem-gb", "24", "--speculative", "--json")
    assert code == 0 and f'"ladder": {sglang_capture_sizes(48, speculative=True)}' in out
    code, out = _cli("ladder", "--engine", "sglang", "--sizes", "1,2,4",
                     "--disable-cuda-graph-padding", "--bs", "3")
    assert code == 0 and "bs 3: runs eagerly (not captured" in out


@pytest.mark.parametrize("args", [
    ("ladder", "--sizes", "1,2,4", "--max-capture-size", "8"),
    ("ladder", "--num-speculative-tokens", "-1"),
    ("ladder", "--performance-mode", "fast"),
    ("sweep", "--ladder", "sglang", "--num-speculative-tokens", "2"),
    ("sweep", "--ladder", "vllm", "--speculative"),
    ("sweep", "--ladder", "1,2,4", "--blackwell"),
])
def test_cli_ladder_options_bad_input(args):
    code, out = _cli(*args)
    assert code == 2 and len([l for l in out.splitlines() if l.strip()]) == 1, out


def test_with_engine_options():
    from microbench.engine.ladders import with_engine_options
    assert with_engine_options("vllm") == "vllm" and with_engine_options("1,2") == "1,2"
    assert with_engine_options("vllm", num_speculative_tokens=1, blackwell=True) == \
        "vllm:num_speculative_tokens=1,blackwell=1"
    assert with_engine_options("sglang", disable_padding=True) == "sglang:disable_padding=1"
    assert resolve_ladder("sglang:disable_padding=1", 6) == [1, 2, 3, 4, 5, 6]
