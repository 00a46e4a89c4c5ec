"""Arms of the sweep: what a user could run instead, timed side by side in one process.

    eager        the Triton decoder's step as bound launches (engine.bound), kernel by kernel:
                 the isolated effect of graphs is eager against graph (always run)
    graph        the Triton decoder through the graph runner (always run unless --mode none)
    engine-eager the unfused plan (one kernel per operation, cuBLAS matmuls) as bound launches:
                 what an engine's enforce_eager runs, which turns off its fusions and its graphs
                 together, so engine-eager against graph is the bundle operators measure
                 (always run with the triton backend)
    torch-eager  the PyTorch reference backend, kernel by kernel
    torch-graph  the PyTorch reference backend through the same graph runner
    compile      the PyTorch reference backend under torch.compile(mode="reduce-overhead")
    torch-compile  the model as plain bf16 PyTorch modules in gpt-fast's style
                 (engine.peer.PeerDecoder) under torch.compile(mode="reduce-overhead"): what a
                 PyTorch user would otherwise run

The compile arm is set up the way gpt-fast sets up its decode step: static shapes (one compiled
graph per batch size, dynamic=False), the KV cache and weights at fixed addresses. gpt-fast gets
the fixed addresses by holding the cache as module buffers; here every weight and cache tensor is
marked with torch._dynamo.mark_static_address, which tells Inductor's CUDA-graph trees the same
thing: writes into the cache are then allowed inside the graph. Without it, CUDA-graph trees skip
the graph ("skipping cudagraphs due to mutated inputs") and the step runs ungraphed. The
torch-compile arm holds its cache as module buffers, as gpt-fast does, and marks them too.

No arm is reported as graphed on trust: after timing, one step of each arm runs under the
profiler and the arm counts as graphed only if that step launched a CUDA graph (cudaGraphLaunch);
Inductor's own count of skipped graphs is reported beside it.
"""
from __future__ import annotations

import time

ARMS = ("eager", "graph", "engine-eager", "torch-eager", "torch-graph", "compile", "torch-compile")
COMPILED_ARMS = ("compile", "torch-compile")   # set up by compiling: CompiledStep, PeerStep
EXTRA_ARMS = ARMS[3:]


def key(arm: str) -> str:
    """run.json prefix of an arm's fields: torch-graph -> torch_graph (torch_graph_step_us)."""
    return arm.replace("-", "_")


def parse_arms(arms) -> tuple:
    """Validate a list of arms; eager, graph (unless --mode none) and engine-eager always run,
    so they may be named or not; an empty list means just those."""
    arms = tuple(arms)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"--arms: unknown arm {bad[0]!r}; choose from {', '.join(ARMS)}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"--arms: arms must be distinct, got {','.join(arms)}")
    return arms


def torch_twin(dec):
    """The same decoder on the PyTorch reference backend, sharing weights and KV caches."""
    import copy

    from microbench.engine import blas
    from microbench.engine.decoder import kernel_ops
    from microbench.engine.plan import Fusion
    twin = copy.copy(dec)        # shallow: the same weight and cache tensors
    twin.backend, twin.ops, twin.fusion = "torch", kernel_ops("torch"), Fusion.UNFUSED
    # the reference backend's matmuls stay on cuBLAS, as a torch-backend decoder's do
    twin.blas = blas.resolve(blas.DEFAULT, dec.shape, dec.dtype, dec.device)
    return twin


def inductor_cudagraph_skips() -> int:
    from torch._dynamo.utils import counters
    return int(counters["inductor"].get("cudagraph_skips", 0))


def compile_decode(fn):
    """torch.compile(fn, mode="reduce-overhead", fullgraph=True, dynamic=False): one compiled
    graph per batch size, each replayed through CUDA-graph trees."""
    import torch
    # one compiled graph per batch size: room for every size of a sweep
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(fn, mode="reduce-overhead", fullgraph=True, dynamic=False)


def mark_static(tensors):
    import torch._dynamo
    for t in tensors:
        torch._dynamo.mark_static_address(t)


class CompiledStep:
    """The compile arm: compile_decode(step) of the torch twin; `setup_s[bs]` is the first
    three calls at that batch size (compile, CUDA-graph trees' warm-up run, record), and
    `skips` the graphs Inductor skipped during them."""

    def __init__(self, dec):
        self.dec = dec
        mark_static([dec.embed, dec.final_norm, *dec.k_cache, *dec.v_cache,
                     *(w for L in dec.layers for w in L.values())])
        self.fn = compile_decode(dec.step)
        self.setup_s: dict[int, float] = {}
        self.skips = 0

    def __call__(self, tokens, positions, slots):
        import torch
        torch.compiler.cudagraph_mark_step_begin()
        return self.fn(tokens, positions, slots)

    def prepare(self, tokens, positions, slots):
        import torch
        skips, t0 = inductor_cudagraph_skips(), time.perf_counter()
        for _ in range(3):
            self(tokens, positions, slots)
        torch.cuda.synchronize()
        self.setup_s[len(tokens)] = time.perf_counter() - t0
        # counted here: a graph is skipped (or not) when it is compiled, and two compiled arms
        # share Inductor's counter
        self.skips += inductor_cudagraph_skips() - skips


class PeerStep(CompiledStep):
    """The torch-compile arm: compile_decode of engine.peer.PeerDecoder, built from the
    decoder's weights (shared) and a copy of its KV caches. Its cache row is the batch row, so
    `slots` must be 0..B-1 (the sweep's). Its logits are checked against the eager arm's and
    the difference reported (torch_compile_max_abs_diff), not asserted: in bf16 the two models
    round differently, so expect a few bf16 ulps of the largest logit (within about 2% of it,
    as tests/engine/test_peer.py bounds it on the CPU), the torch-eager arm's order; more says
    the peer computes something else."""

    def __init__(self, dec):
        from microbench.engine.peer import PeerDecoder
        self.dec, self.model = dec, PeerDecoder.from_decoder(dec)
        # gpt-fast's buffers, marked as the compile arm's tensors are: the cache is written
        # inside the graph
        mark_static(self.model.caches())
        self.fn = compile_decode(self.model)
        self.setup_s: dict[int, float] = {}
        self.skips = 0

    def __call__(self, tokens, positions, slots):
        import torch
        torch.compiler.cudagraph_mark_step_begin()
        return self.fn(tokens, positions)


def compiled_arm(arm: str, dec, twin=None):
    """The compiled step of arm `compile` (of `twin`, torch_twin(dec) when not given) or
    `torch-compile` (the peer of `dec`)."""
    if arm == "compile":
        return CompiledStep(twin if twin is not None else torch_twin(dec))
    if arm == "torch-compile":
        return PeerStep(dec)
    raise ValueError(f"{arm!r} is not a compiled arm; those are {', '.join(COMPILED_ARMS)}")


def launched_graph(fn) -> bool:
    """Whether one call of fn launches a CUDA graph (a cudaGraphLaunch in the profiler's trace)."""
    import torch
    from torch.profiler import ProfilerActivity

    from microbench.bench.profile import quiet_profile
    fn()
    torch.cuda.synchronize()
    with quiet_profile([ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return any("cudaGraphLaunch" in e.name for e in prof.events())
