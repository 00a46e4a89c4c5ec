"""The sweep's options, validated once: a frozen config the CLI builds and run_sweep takes, with
the limits the CLI states in --help."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from microbench.bench.model_options import check_batch_sizes, check_full_max_size, check_model_options
from microbench.engine.shapes import MAX_BATCH, ModelShape, PRESETS, max_seq_for  # noqa: F401 (re-exported)
from microbench.engine.ladders import resolve_ladder
from microbench.engine.runner import MODES

DEFAULT_BS = (1, 4, 16, 64)


@dataclass(frozen=True)
class SweepConfig:
    bs: tuple = DEFAULT_BS
    preset: str = "opt-125m"
    mode: str = "full"
    ladder: str = "vllm"
    context: int = 512
    dtype: str = "bfloat16"
    steps: int = 10            # steps per timing sample
    time_budget: float = 1.0   # seconds per measured figure, at most (at least 10 samples)
    backend: str = "triton"
    seed: int = 0
    out: str = "runs"
    arms: tuple = ()   # extra arms; eager and graph (unless mode none) always run: microbench.bench.arms
    split_launch: bool = False   # full mode: each size as two graphs (GraphRunner split_launch)
    # full_and_piecewise: the largest size the full pass captures (GraphRunner full_max_size)
    full_max_size: int | None = None
    # keep each rotation's thread on a quick CPU (bench.hostcpu); TP ranks choose once per row,
    # each from its own share of the CPUs
    pin_cpu: bool = True

    def validate(self) -> "SweepConfig":
        """Raise ValueError('--option: what was wrong; what is allowed') on a bad value."""
        check_batch_sizes(self.bs)
        check_model_options(self.preset, self.context, self.dtype)
        if self.mode not in MODES:
            raise ValueError(f"--mode: {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {self.steps}")
        if not self.time_budget > 0:
            raise ValueError(f"--time-budget: must be > 0 seconds, got {self.time_budget}")
        from microbench.bench.arms import parse_arms
        arms = parse_arms(self.arms)
        if self.split_launch and self.mode != "full":
            raise ValueError(f"--split-launch: only with --mode full, got --mode {self.mode}")
        check_full_max_size(self.mode, self.full_max_size)
        for a in ("graph", "torch-graph"):
            if self.mode == "none" and a in arms:
                raise ValueError(f"--arms: {a} needs a graph mode; drop --mode none or the arm")
        checked_ladder(self.ladder, max(self.bs))
        return self

    def ladder_sizes(self) -> list[int]:
        return resolve_ladder(self.ladder, max(self.bs))

    @property
    def shape(self) -> ModelShape:
        return PRESETS[self.preset]

    def to_dict(self) -> dict:
        return asdict(self)


def checked_ladder(spec: str, max_bs: int) -> list[int]:
    """The capture sizes of --ladder for batches up to max_bs; ValueError naming the option
    (one line) on a spec that does not parse or a size above MAX_BATCH."""
    try:
        sizes = resolve_ladder(spec, max_bs)
    except ValueError as e:
        raise ValueError(f"--ladder: {e}; use vllm, sglang, pow2 or a list like 1,2,4,8") from None
    if sizes[-1] > MAX_BATCH:
        raise ValueError(f"--ladder: size {sizes[-1]} is above the limit {MAX_BATCH}")
    return sizes

