"""Capture ladders: which batch sizes get a CUDA graph.

The engines' rules, rebuilt from their current source (each function names the upstream file and
function it follows), plus powers of two and explicit lists. Sizes are rows of one decode step:
tokens, which with speculative decoding are (1 + draft tokens) per sequence.
"""
from __future__ import annotations

PERFORMANCE_MODES = ("balanced", "interactivity", "throughput")


def _vllm_grid(cap: int) -> list[int]:
    """1, 2, 4 up to cap; multiples of 8 from 8 below 256; multiples of 16 from 256 up to cap."""
    return ([i for i in (1, 2, 4) if i <= cap] + list(range(8, min(cap + 1, 256), 8))
            + list(range(256, cap + 1, 16)))


def vllm_capture_sizes(max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
                       max_capture_size: int | None = None, off_stride_fix: bool = True, *,
                       num_speculative_tokens: int = 0, performance_mode: str = "balanced",
                       capture_sizes=None, blackwell: bool = False) -> list[int]:
    """vLLM's capture sizes, as `VllmConfig._set_cudagraph_sizes` (vllm/config/vllm.py) builds
    them for a model that is not run eagerly.

    Default ceiling: min(max_num_seqs * q * 2, P) with q = 1 + num_speculative_tokens (vLLM's
    `uniform_decode_query_len`) and P = 512, or 1024 on a data-center Blackwell GPU
    (`blackwell`); `max_capture_size` (vLLM's `max_cudagraph_capture_size`) replaces it. The
    ceiling is then clipped to max_num_batched_tokens.
    - An explicit list (`capture_sizes`, vLLM's `cudagraph_capture_sizes`) is de-duplicated and
      only filtered: sizes above max_num_batched_tokens are dropped (those batches run
      eagerly). Given with a `max_capture_size` that is not its largest kept size, vLLM refuses
      the pair: ValueError.
    - Otherwise the grid: 1, 2, 4; multiples of 8 below 256; multiples of 16 from 256, up to
      the ceiling. performance_mode "interactivity" adds every size from 1 to min(ceiling, 32).
      With `off_stride_fix` (vLLM PR #40734) max_num_batched_tokens is added when it lies within
      the ceiling. With q > 1 the uniform decode sizes n * q are added, for n on the same grid
      of request counts up to min(max_num_seqs, P) plus that count itself, where n * q lies
      within the unclipped default ceiling and within max_num_batched_tokens.
    With one sequence and no speculation the ceiling is 2, so the ladder collapses to [1, 2].
    Not modelled: dynamic speculative decoding's per-tier widths, sequence parallelism's TP
    filter, and FULL_AND_PIECEWISE's separate mixed-batch pass.
    """
    for name, v in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
        _check_positive(name, v)
    if not isinstance(num_speculative_tokens, int) or num_speculative_tokens < 0:
        raise ValueError(f"num_speculative_tokens must be an integer >= 0, got {num_speculative_tokens!r}")
    if performance_mode not in PERFORMANCE_MODES:
        raise ValueError(f"performance_mode must be one of {', '.join(PERFORMANCE_MODES)}, "
                         f"got {performance_mode!r}")
    if max_capture_size is not None:
        _check_positive("max_capture_size", max_capture_size)
    if capture_sizes is not None:
        return _vllm_explicit(capture_sizes, max_num_batched_tokens, max_capture_size)
    q, platform = 1 + num_speculative_tokens, (1024 if blackwell else 512)
    uniform: list[int] = []
    if max_capture_size is None:
        cap = min(max_num_seqs * q * 2, platform)
        if q > 1:
            reqs = min(max_num_seqs, platform)
            uniform = [n * q for n in set(_vllm_grid(reqs) + [reqs]) if n * q <= cap]
    else:
        cap = max_capture_size
    cap = min(cap, max_num_batched_tokens)
    sizes = _vllm_grid(cap)
    if performance_mode == "interactivity":
        sizes += list(range(1, min(cap, 32) + 1))
    if off_stride_fix and max_num_batched_tokens <= cap:
        sizes.append(max_num_batched_tokens)
    sizes += [s for s in uniform if s <= max_num_batched_tokens]
    return sorted(set(sizes))


def _vllm_explicit(capture_sizes, max_num_batched_tokens: int, max_capture_size) -> list[int]:
    sizes = list(capture_sizes)
    if not sizes:
        raise ValueError("capture_sizes must hold at least one size when graphs are used")
    for s in sizes:
        _check_positive("capture_sizes", s)
    kept = sorted({s for s in sizes if s <= max_num_batched_tokens})
    if max_capture_size is not None and max_capture_size != (kept[-1] if kept else 0):
        raise ValueError(f"max_capture_size {max_capture_size} must equal the largest kept "
                         f"capture size ({kept[-1] if kept else 0})")
    return kept


def sglang_capture_sizes(max_bs: int, speculative: bool = False, disable_padding: bool = False,
                         max_running_requests: int | None = None) -> list[int]:
    """SGLang's decode capture sizes for `cuda_graph_max_bs` = max_bs, as
    `generate_decode_cuda_graph_batch_sizes` (python/sglang/srt/arg_groups/cuda_graph_hook.py;
    `ServerArgs._generate_cuda_graph_batch_sizes` in server_args.py before) builds them, then
    `get_batch_sizes_to_capture` (python/sglang/srt/model_executor/cuda_graph_runner.py).

    - disable_padding (`--disable-cuda-graph-padding`): every size 1..max_bs; at run time only a
      batch whose size was captured runs graphed (`PaddingDispatcher(..., exact=True)`).
    - without speculative decoding: 1, 2, 4, 8, 12; 16..256 by 8; 272..496 by 16; 512.. by 32.
    - with it: 1..8; 10..32 by 2; 40..64 by 4; 72..256 by 8; 272.. by 16.
    All kept up to max_bs. Then the runner's rule: when the list goes past
    `max_running_requests` (the request pool), that count is added and larger sizes dropped.
    """
    _check_positive("max_bs", max_bs)
    if disable_padding:
        sizes = list(range(1, max_bs + 1))
    elif not speculative:
        sizes = ([1, 2, 4, 8, 12] + list(range(16, 257, 8)) + list(range(272, 512, 16))
                 + list(range(512, max_bs + 1, 32)))
    else:
        sizes = (list(range(1, 9)) + list(range(10, 33, 2)) + list(range(40, 65, 4))
                 + list(range(72, 257, 8)) + list(range(272, max_bs + 1, 16)))
    sizes = [b for b in sizes if b <= max_bs]
    if max_running_requests is not None:
        _check_positive("max_running_requests", max_running_requests)
        if max(sizes) > max_running_requests:
            sizes.append(max_running_requests)
        sizes = [b for b in sizes if b <= max_running_requests]
    return sorted(set(sizes))


def sglang_default_max_bs(gpu_mem_gib: float | None, tp: int = 1) -> int:
    """SGLang's default `cuda_graph_max_bs` from the GPU's memory (GiB) and the TP size, as
    `handle_gpu_memory_settings` (python/sglang/srt/arg_groups/memory_hook.py) sets it:
    under 20 GiB 8; under 35 GiB 48 (160 with TP >= 4); under 60 GiB 32 (160); under 160 GiB
    256 (512); else 512; unknown memory 160."""
    if gpu_mem_gib is None:
        return 160
    if not gpu_mem_gib > 0:
        raise ValueError(f"gpu_mem_gib must be > 0, got {gpu_mem_gib!r}")
    _check_positive("tp", tp)
    big_tp = tp >= 4
    if gpu_mem_gib < 20:
        return 8
    if gpu_mem_gib < 35:
        return 160 if big_tp else 48
    if gpu_mem_gib < 60:
        return 160 if big_tp else 32
    if gpu_mem_gib < 160:
        return 512 if big_tp else 256
    return 512


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
# engine options a ladder spec may carry ("vllm:num_speculative_tokens=2,blackwell=1"), by type
SPEC_OPTIONS = {
    "vllm": dict(num_speculative_tokens=int, performance_mode=str, blackwell=bool,
                 max_num_batched_tokens=int, max_capture_size=int),
    "sglang": dict(speculative=bool, disable_padding=bool, max_bs=int),
}


def ladder_spec(engine: str, **opts) -> str:
    """The spec string for an engine's ladder with options that differ from the defaults
    (None and False are left out), e.g. 'vllm:num_speculative_tokens=2'; `resolve_ladder`
    reads it back. A run records this string as its ladder."""
    if engine not in SPEC_OPTIONS:
        return engine
    unknown = set(opts) - set(SPEC_OPTIONS[engine])
    if unknown:
        raise ValueError(f"{engine} ladder: unknown options {', '.join(sorted(unknown))}")
    kept = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in opts.items()
            if v is not None and v is not False and not (k == "performance_mode" and v == "balanced")
            and not (k == "num_speculative_tokens" and v == 0)]
    return engine + (":" + ",".join(kept) if kept else "")


def _parse_spec(spec: str) -> tuple[str, dict]:
    engine, _, rest = spec.partition(":")
    types, opts = SPEC_OPTIONS[engine], {}
    for item in filter(None, (t.strip() for t in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq or key not in types:
            raise ValueError(f"{engine} ladder option {item!r}: use key=value with a key of "
                             f"{', '.join(types)}")
        try:
            opts[key] = (val in ("1", "true", "True")) if types[key] is bool else types[key](val)
        except ValueError:
            raise ValueError(f"{engine} ladder option {key}: {val!r} is not an integer") from None
    return engine, opts


def resolve_ladder(spec: str, max_bs: int) -> list[int]:
    """A ladder by name (optionally with engine options, see `ladder_spec`) sized to max_bs, the
    most sequences a step runs, or an explicit list '1,2,4'.
    vllm: max_num_seqs = max_bs, so its ceiling is 2·max_bs up to 512, and
    max_num_batched_tokens = max(8192, max_bs) unless given. With num_speculative_tokens k the
    sizes are tokens, (1 + k) a sequence: the ladder then reaches past max_bs rows.
    sglang: a server whose cuda_graph_max_bs is max(max_bs, 512) (max_bs when given), the
    largest default, serving at most max_bs requests, so max_bs is on the ladder as SGLang's
    runner adds it."""
    engine = spec.partition(":")[0]
    if engine in SPEC_OPTIONS:
        engine, opts = _parse_spec(spec)
        if engine == "vllm":
            opts.setdefault("max_num_batched_tokens", max(8192, max_bs))
            return vllm_capture_sizes(max_num_seqs=max_bs, **opts)
        cap = opts.pop("max_bs", None)
        cap = max(max_bs, 512) if cap is None else cap
        return sglang_capture_sizes(cap, max_running_requests=max_bs, **opts)
    if spec == "pow2":
        return pow2_capture_sizes(max_bs)
    return sorted(set(parse_int_list(spec, "ladder")))


def _check_positive(name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def with_engine_options(ladder: str, num_speculative_tokens: int = 0,
                        performance_mode: str = "balanced", blackwell: bool = False,
                        max_num_batched_tokens: int | None = None, speculative: bool = False,
                        disable_padding: bool = False) -> str:
    """The ladder 'vllm' or 'sglang' with engine options folded into its spec (`ladder_spec`);
    unchanged without options. ValueError for an option of the other engine, or of an engine
    for a list or pow2."""
    vllm = ladder_spec("vllm", num_speculative_tokens=num_speculative_tokens,
                       performance_mode=performance_mode, blackwell=blackwell,
                       max_num_batched_tokens=max_num_batched_tokens)
    sglang = ladder_spec("sglang", speculative=speculative, disable_padding=disable_padding)
    if vllm != "vllm" and ladder != "vllm" or sglang != "sglang" and ladder != "sglang":
        raise ValueError(f"--ladder {ladder}: the vLLM options need --ladder vllm, the SGLang "
                         "options --ladder sglang")
    return vllm if ladder == "vllm" else sglang if ladder == "sglang" else ladder
