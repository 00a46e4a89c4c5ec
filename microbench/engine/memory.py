"""Memory headroom as an engine spends it: a `gpu_memory_utilization` budget, the KV cache it
leaves, and what each captured graph size costs in KV-cache tokens. Pure arithmetic (no torch):
the measuring side (bench.headroom) fills in the measured terms, the verdicts read them back.

vLLM's start-up order (vllm/v1/worker/gpu_worker.py, `Worker.determine_available_memory`, then
`initialize_from_config`, then `compile_or_warm_up_model`, which calls
gpu_model_runner.py `GPUModelRunner.capture_model`):

1. profile: run the model eagerly on the largest batch (`GPUModelRunner.profile_run`) and read
   the torch allocator's peak increase and the memory that appeared outside it;
2. KV cache: requested = ceil(total · utilization) (vllm/v1/worker/utils.py), and

       kv_cache_bytes = requested - (weights + activation peak + non-torch increase)

   is allocated as the KV cache;
3. capture: the CUDA graphs are captured afterwards, so their pool lands outside the budget, in
   the memory the utilization left unrequested (total - requested). An engine that counted the
   pool inside the budget (vLLM's cudagraph memory estimate does) would give the KV cache

       tokens(pool) = floor((kv_cache_bytes - pool) / kv_bytes_per_token)

   so a captured size whose pool grows by p bytes costs ceil(p / kv_bytes_per_token) tokens.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from microbench.engine.shapes import ModelShape

OPTION = "--gpu-memory-utilization"
SKIPPED = "skipped (out of memory)"


def kv_bytes_per_token(shape: ModelShape, elt: int) -> int:
    """K and V of one token in every layer: 2 · n_layers · n_kv_heads · head_dim · elt."""
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * elt


def check_utilization(u: float, option: str = OPTION) -> float:
    """`u` if 0 < u <= 1 (vLLM's range for gpu_memory_utilization), else a one-line ValueError."""
    if not (isinstance(u, (int, float)) and 0 < u <= 1):
        raise ValueError(f"{option}: a fraction of the device's memory in (0, 1], got {u!r}")
    return float(u)


@dataclass(frozen=True)
class MemoryBudget:
    """The budget of one engine start-up; every term in bytes but the utilization."""
    total_bytes: int
    utilization: float
    weight_bytes: int
    activation_bytes: int        # torch allocator's peak increase during the profile step
    non_torch_bytes: int         # device memory outside the allocator that the profile added
    kv_bytes_per_token: int

    def __post_init__(self):
        check_utilization(self.utilization)
        if self.kv_bytes_per_token <= 0:
            raise ValueError(f"kv_bytes_per_token must be > 0, got {self.kv_bytes_per_token}")

    @property
    def requested_bytes(self) -> int:
        """ceil(total · utilization), as vLLM rounds it."""
        return math.ceil(self.total_bytes * self.utilization)

    @property
    def non_kv_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes + self.non_torch_bytes

    @property
    def kv_cache_bytes(self) -> int:
        """What the budget leaves the KV cache (never below 0)."""
        return max(0, self.requested_bytes - self.non_kv_bytes)

    @property
    def kv_tokens(self) -> int:
        return self.kv_cache_bytes // self.kv_bytes_per_token

    @property
    def unrequested_bytes(self) -> int:
        """Memory the utilization leaves outside the budget: where graphs captured after the KV
        cache is allocated must fit."""
        return self.total_bytes - self.requested_bytes

    def tokens_with_pool(self, pool_bytes: int) -> int:
        """KV tokens left if `pool_bytes` of graphs came out of the KV cache."""
        return max(0, self.kv_cache_bytes - pool_bytes) // self.kv_bytes_per_token

    def to_dict(self) -> dict:
        """The measured terms and the derived ones, for a run's record."""
        return dict(asdict(self), requested_bytes=self.requested_bytes,
                    non_kv_bytes=self.non_kv_bytes, kv_cache_bytes=self.kv_cache_bytes,
                    kv_tokens=self.kv_tokens, unrequested_bytes=self.unrequested_bytes)


def check_free(budget: MemoryBudget, free_at_start: int) -> None:
    """ValueError when the requested memory exceeds what was free at start-up (vLLM refuses to
    start then: `request_memory` in vllm/v1/worker/utils.py)."""
    if budget.requested_bytes > free_at_start:
        raise ValueError(
            f"{OPTION}: {budget.utilization:g} of {budget.total_bytes / 2**30:.2f} GiB asks for "
            f"{budget.requested_bytes / 2**30:.2f} GiB but {free_at_start / 2**30:.2f} GiB was "
            f"free at start-up; lower it")


def size_costs(budget: MemoryBudget, sizes: list[dict]) -> list[dict]:
    """One row per captured size, in capture order (`sizes`: the runner's report entries, each
    with size and pool_bytes, the pool's growth charged to that size): the size's pool growth
    and its cost in KV tokens, the pool so far and the KV tokens left were it inside the budget,
    and whether the pool so far fits in the unrequested memory."""
    rows, pool = [], 0
    per = budget.kv_bytes_per_token
    for i, s in enumerate(sizes):
        grown = max(0, int(s["pool_bytes"]))
        pool += grown
        rows.append(dict(order=i + 1, size=s["size"], size_pool_bytes=grown,
                         size_kv_tokens=-(-grown // per), pool_bytes=pool,
                         kv_tokens_if_budgeted=budget.tokens_with_pool(pool),
                         fits_unrequested=pool <= budget.unrequested_bytes))
    return rows


def budget_lines(budget: dict, costs: list[dict], skipped: list[int]) -> list[str]:
    """The budget and the captures as text (budget: MemoryBudget.to_dict())."""
    g = lambda n: f"{n / 2**30:.2f} GiB"
    m = lambda n: f"{n / 2**20:.1f} MiB"
    pool = costs[-1]["pool_bytes"] if costs else 0
    lines = [f"budget: {budget['utilization']:g} of {g(budget['total_bytes'])} = "
             f"{g(budget['requested_bytes'])}; weights {g(budget['weight_bytes'])}, profile "
             f"step's activations {m(budget['activation_bytes'])}, outside torch "
             f"{m(budget['non_torch_bytes'])}",
             f"KV cache: {g(budget['kv_cache_bytes'])} = {budget['kv_tokens']} tokens at "
             f"{budget['kv_bytes_per_token']} B a token",
             f"graphs: {len(costs)} sizes captured after it, pool {m(pool)} = "
             f"{-(-pool // budget['kv_bytes_per_token'])} KV tokens "
             f"({'inside' if pool <= budget['unrequested_bytes'] else 'beyond'} the "
             f"{g(budget['unrequested_bytes'])} left unrequested)"]
    if skipped:
        lines.append(f"{SKIPPED}: sizes {', '.join(map(str, skipped))}; those batches pad to a "
                     f"larger captured size or run eagerly")
    return lines
