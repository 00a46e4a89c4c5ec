"""A layer's ops priced beside the ops they run between in a step (ops.kernel_lines uses it).

kernel_lines times each op as a graph of calls of that op alone, on distinct data. With
programmatic dependent launch such a chain overlaps its calls more than a step does: each call
launches early onto the SMs the call before leaves idle and loads its first weights there while
that call still runs, and a skinny op at a few rows leaves most SMs idle. In a step the op runs
between other ops, which leave it less room, so the ops' chain times summed fall short of the
step's GPU time, most for the smallest models (docs/measuring.md, "Kernel lines").

So each line batch also times, for every op of one layer (plan.layer_kernels, in launch order,
taken as a cycle: the layer's last op is followed by the next layer's first), a chain of that
op alternating with the op after it, on distinct data. Half the pairs' sum counts every op once
beside the op before it and once beside the op after it: that is what the layer costs in a step.
Its ratio to the same ops' alone sum, the mix factor, scales the layer's op points (and so the
family lines fitted on them, which also price the final norm). Two approximations: in the
unfused plan RoPE and the KV store are not timed as ops, so QKV is paired with attention across
them; and a tensor-parallel step puts an all-reduce after O and down, so its sweep keeps the
alone times (kernel_lines' `mix=False`).
"""
from __future__ import annotations

from collections.abc import Callable

from microbench.engine.plan import layer_kernels


def layer_cycle(layer_names: list[str], timed) -> list[str]:
    """The layer's op names in launch order, those that were timed (`timed`) only: a kernel
    timed inside another op's call (attention's reduce, inside the attention call) is left out."""
    return [name for name in layer_names if name in timed]


def cycle_pairs(cycle: list[str]) -> list[tuple[str, str]]:
    """(op, the op after it) for every op of the cycle, the last paired with the first."""
    return [(op, cycle[(j + 1) % len(cycle)]) for j, op in enumerate(cycle)]


def mix_factor(pair_us: list[float], alone_us: list[float]) -> float:
    """The layer's cost in a step over its ops' alone sum: (sum of the pairs' us / 2) divided
    by the sum of the ops' alone us (each op of the cycle counted once per place it holds)."""
    if len(pair_us) != len(alone_us) or len(alone_us) < 2:
        raise ValueError(f"mix_factor: a cycle of at least 2 ops, one pair per op; got "
                         f"{len(pair_us)} pairs for {len(alone_us)} ops")
    alone = sum(alone_us)
    if alone <= 0 or min(pair_us) <= 0:
        raise ValueError(f"mix_factor: GPU times must be positive, got pairs {pair_us} and ops "
                         f"{alone_us}")
    return sum(pair_us) / 2 / alone


def layer_mix(dec, b: int, context: int, fns: dict, plan: dict, alone: dict,
              chain_us: Callable, min_bytes: int) -> dict | None:
    """The layer's ops at batch b timed in pairs: {factor, cycle, pairs: [{ops, us, calls}]},
    or None when fewer than two of its ops were timed or a time came out non-positive (a
    noisy replay less the replay's fixed cost: the points then keep their alone times).
    fns: layer_op_fns' name -> make(i);
    plan: name -> the plan's Kernel at b; alone: name -> the op's alone us per call;
    chain_us(calls, n, label): GPU us per unit of a graph of `calls` holding n units."""
    names = [k.name for k in layer_kernels(dec.shape, b, context, dec.embed.element_size(),
                                           dec.attention_launches(b), fusion=dec.fusion_at(b))]
    cycle = layer_cycle(names, alone)
    if len(cycle) < 2:
        return None
    pairs = []
    for first, second in cycle_pairs(cycle):
        nbytes = max(plan[first].bytes + plan[second].bytes, 1)
        n = min(256, max(4, -(-min_bytes // nbytes)))
        calls = [f for i in range(n) for f in (fns[first](i), fns[second](i))]
        us = chain_us(calls, n, f"kernel pair: {first} then {second}, b {b}")
        pairs.append(dict(ops=[first, second], us=us, calls=n))
    pair_us, alone_us = [p["us"] for p in pairs], [alone[name] for name in cycle]
    if min(pair_us + alone_us) <= 0:
        return None
    return dict(factor=mix_factor(pair_us, alone_us), cycle=cycle, pairs=pairs)
