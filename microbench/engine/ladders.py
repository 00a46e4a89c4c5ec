"""Capture ladders: which batch sizes get a CUDA graph.

Three engines' defaults, rebuilt from their published rules, plus explicit lists.
"""
from __future__ import annotations


def vllm_capture_sizes(max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
                       max_capture_size: int | None = None, off_stride_fix: bool = True) -> list[int]:
    """vLLM's default decode ladder (`VllmConfig._set_cudagraph_sizes`).

    cap = min(2 * max_num_seqs, 512) unless `max_capture_size` is given, then clipped to
    max_num_batched_tokens. Ladder: 1, 2, 4 within the cap; multiples of 8 from 8 below 256;
    multiples of 16 from 256 up to the cap. With `off_stride_fix` (vLLM PR #40734, April 2026)
    max_num_batched_tokens is appended when it lies within the cap and is not already there.
    With one sequence the cap is 2, so the ladder collapses to [1, 2].
    """
    for name, v in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
        _check_positive(name, v)
    cap = min(2 * max_num_seqs, 512) if max_capture_size is None else max_capture_size
    _check_positive("max_capture_size", cap)
    cap = min(cap, max_num_batched_tokens)
    sizes = [i for i in (1, 2, 4) if i <= cap]
    sizes += list(range(8, min(cap + 1, 256), 8))
    sizes += list(range(256, cap + 1, 16))
    if off_stride_fix and max_num_batched_tokens <= cap and max_num_batched_tokens not in sizes:
        sizes.append(max_num_batched_tokens)
    return sorted(set(sizes))


def sglang_capture_sizes(max_bs: int) -> list[int]:
    """SGLang's decode ladder: 1, 2, 4, 8, 12, multiples of 8 from 16 to 256, multiples of 16
    from 272 below 512, multiples of 32 from 512, all up to max_bs, plus max_bs itself."""
    _check_positive("max_bs", max_bs)
    base = [1, 2, 4, 8, 12] + list(range(16, 257, 8)) + list(range(272, 512, 16))
    base += list(range(512, max_bs + 1, 32))
    return sorted({b for b in base if b <= max_bs} | {max_bs})


def pow2_capture_sizes(max_bs: int) -> list[int]:
    """Powers of two up to max_bs, plus max_bs if it is not one."""
    _check_positive("max_bs", max_bs)
    sizes, p = [], 1
    while p <= max_bs:
        sizes.append(p)
        p *= 2
    return sorted(set(sizes) | {max_bs})


def parse_int_list(text: str, what: str = "list") -> list[int]:
    """'1,2,4' -> [1, 2, 4]; rejects empty items, non-integers and values < 1."""
    items = [t.strip() for t in str(text).split(",")]
    if not text or not str(text).strip() or any(t == "" for t in items):
        raise ValueError(f"{what} must be comma-separated positive integers, got {text!r}")
    out = []
    for t in items:
        try:
            v = int(t)
        except ValueError:
            raise ValueError(f"{what} must be comma-separated positive integers, "
                             f"got {t!r} in {text!r}") from None
        if v < 1:
            raise ValueError(f"{what} values must be >= 1, got {v}")
        out.append(v)
    return out


LADDERS = ("vllm", "sglang", "pow2")


def resolve_ladder(spec: str, max_bs: int) -> list[int]:
    """A ladder by name, sized to max_bs (vLLM: max_num_seqs = max_bs, so its cap is 2·max_bs
    up to 512, and max_num_batched_tokens = max(8192, max_bs)), or an explicit list '1,2,4'."""
    if spec == "vllm":
        return vllm_capture_sizes(max_num_seqs=max_bs, max_num_batched_tokens=max(8192, max_bs))
    if spec == "sglang":
        return sglang_capture_sizes(max_bs)
    if spec == "pow2":
        return pow2_capture_sizes(max_bs)
    return sorted(set(parse_int_list(spec, "ladder")))


def _check_positive(name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
