"""Whole graphed steps of one preset's decoders that differ in the fused attention's split
count, keys per tile or launch, or in the skinny matmuls' table, interleaved in one process
(the sampling of `microbench tune --ab`: bench.tune.step_ab, AB/BA order, CUDA events, paired
ratios with bootstrap intervals).

usage: python scripts/step_probe.py --preset llama-8b --bs 1 --arm default --arm splits=3 \
           --arm block_n=32 --arm table=PATH --arm splits=3,table=PATH --arm stream

An arm is `default` (the decoder as the sweep builds it) or comma-separated settings:
`splits=N` (every rope_store_attention launch takes N KV splits; N >= 1, and keep it at most
the cache's K/V tiles: nothing here checks that), `block_n=N` (its K/V tiles hold N keys: 16,
32, 64 or 128; the split count follows unless `splits` is given too), `stream` (its streaming
launch: nothing loaded before the PDL wait, each tile's V after its softmax; the split count
stays the plan's, or the arm's `splits`), `warps=N` (2, 4 or 8 warps a program), `chunk=N`
(its merge loads the partials of N splits at once: 1, 2, 4 or 8, at most the splits' power of
two) and `table=PATH` (the skinny matmuls bound with the gemv table at PATH instead of the
device's). The first arm is the reference of the ratios; the compiled Triton kernels'
registers, spills and shared memory are printed last. Needs a CUDA GPU. This is a probe, for
choosing what to build: a setting worth keeping goes into the decoder or a table, measured by
the toolkit's own commands."""
import contextlib
import importlib
import os
import sys

import click
import torch

from microbench.cli_tune import previous_table_problem
from microbench.engine.shapes import PRESETS

# rope_store_attention's module (the package re-exports its function under the same name)
RSA = importlib.import_module("microbench.kernels.rope_store_attention")
_FORCED = {"splits": None, "block_n": None, "stream": None, "warps": None, "chunk": None}
_fused_plan = RSA.fused_plan
_block_n_for = RSA.block_n_for
_launch = RSA.launch
# the settings that take one of a few values, and those values
CHOICES = {"block_n": ("16", "32", "64", "128"), "warps": ("2", "4", "8"),
           "chunk": ("1", "2", "4", "8")}


def _forced_plan(batch, num_kv_heads, max_seq, device, head_dim=128, dtype=torch.bfloat16,
                 num_splits=None, capped=False, block_n=None):
    """fused_plan, with the split count and the streaming launch the arm being built forces (if
    any)."""
    if num_splits is None and _FORCED["splits"] is not None:
        num_splits = _FORCED["splits"]
    n, stream = _fused_plan(batch, num_kv_heads, max_seq, device, head_dim, dtype, num_splits,
                            capped, block_n)
    return n, bool(stream if _FORCED["stream"] is None else _FORCED["stream"])


def _forced_launch(record, kernel, grid, *args, **kw):
    """rope_store_attention's launch, with the warps and the merge's partials per load (S_CHUNK,
    at most its BLOCK_S) the arm being built forces (if any)."""
    if _FORCED["warps"]:
        kw["num_warps"] = _FORCED["warps"]
    if _FORCED["chunk"]:
        kw["S_CHUNK"] = min(_FORCED["chunk"], kw["BLOCK_S"])
    return _launch(record, kernel, grid, *args, **kw)


def _forced_block_n(device, head_dim, dtype):
    """block_n_for, with the keys per K/V tile the arm being built forces (if any)."""
    return _FORCED["block_n"] or _block_n_for(device, head_dim, dtype)


def parse_arm(spec: str) -> dict:
    """'default' -> {}; 'splits=3,table=p.json' -> {'splits': 3, 'table': 'p.json'}."""
    if spec == "default":
        return {}
    out = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if part == "stream" and part not in out:   # nothing loaded before the PDL wait
            out["stream"] = True
            continue
        if not sep or key not in ("splits", "table", *CHOICES) or key in out:
            raise click.BadParameter(f"{spec!r}: each setting is splits=N, block_n=N, warps=N, "
                                     f"chunk=N, stream or table=PATH, once each; or the arm is "
                                     f"'default'", param_hint="--arm")
        if key == "splits":
            if not value.isdecimal() or int(value) < 1:
                raise click.BadParameter(f"{spec!r}: splits must be a whole number >= 1",
                                         param_hint="--arm")
            out[key] = int(value)
        elif key in CHOICES:
            if value not in CHOICES[key]:
                raise click.BadParameter(f"{spec!r}: {key} must be one of "
                                         f"{', '.join(CHOICES[key])}", param_hint="--arm")
            out[key] = int(value)
        else:
            out[key] = _table(spec, value)
    return out


def _table(spec: str, path: str) -> str:
    """`path`, once it reads as a gemv table with entries (a file without them would bind every
    matmul with the rule, silently)."""
    problem = previous_table_problem(path, name="table")
    if problem:
        raise click.BadParameter(f"{spec!r}: {problem}", param_hint="--arm")
    return path


@contextlib.contextmanager
def arms_patched(settings: dict):
    """While open, bench.tune builds the arm `settings` names: its VARIANTS["probe"] lists the
    arms, and its _graphed_step builds each with that arm's table and, through _FORCED, its
    attention split count, tile, streaming launch, warps and merge chunk (rope_store_attention
    reads fused_plan, block_n_for and launch from its module when it launches, which the graph
    captures inside _graphed_step). All of it is put back on exit."""
    from microbench.bench import tune
    build = tune._graphed_step
    saved = (RSA.fused_plan, RSA.block_n_for, RSA.launch, build)

    def build_arm(preset, bs, context, probe_arm=None, **kw):
        s = settings[probe_arm]
        if "table" in s:   # _graphed_step reads the table's path from the variable it names
            var = f"MICROBENCH_PROBE_TABLE_{list(settings).index(probe_arm)}"
            os.environ[var] = s["table"]
            kw["table_file"] = var
        if any(s.get(k) for k in _FORCED):
            # the arm's fused-attention settings over the splits table's mode: a table's
            # half-tile choice would halve the forced tile, its capped one is no count the arm
            # asked, and its separate one would not run the fused kernel at all
            kw["splits"] = "fill"
        _FORCED.update({k: s.get(k) for k in _FORCED})
        try:
            return build(preset, bs, context, **kw)
        finally:
            _FORCED.update(dict.fromkeys(_FORCED))

    RSA.fused_plan, RSA.block_n_for, RSA.launch = _forced_plan, _forced_block_n, _forced_launch
    tune._graphed_step = build_arm
    tune.VARIANTS["probe"] = tuple((spec, {"probe_arm": spec}) for spec in settings)
    try:
        yield tune
    finally:
        RSA.fused_plan, RSA.block_n_for, RSA.launch, tune._graphed_step = saved
        del tune.VARIANTS["probe"]


@click.command()
@click.option("--preset", required=True, type=click.Choice(list(PRESETS)))
@click.option("--bs", type=click.IntRange(1, 512), default=1, show_default=True)
@click.option("--arm", "arms", multiple=True, required=True,
              help="default, or any of splits=N, block_n=N, stream, warps=N, chunk=N and "
                   "table=PATH (comma-separated); two at least")
@click.option("--rounds", type=click.IntRange(2, 400), default=40, show_default=True)
def main(preset, bs, arms, rounds):
    settings = {spec: parse_arm(spec) for spec in arms}
    if len(settings) < 2:
        raise click.UsageError("--arm: give two different arms at least")
    if not torch.cuda.is_available():
        raise click.UsageError("step_probe times graphed steps on a CUDA GPU; none is visible")
    with arms_patched(settings) as tune:
        r = tune.step_ab(preset, bs, "probe", rounds=rounds)
    names = r["arms"]
    click.echo(f"{preset} bs {bs}: graph steps of {', '.join(names)}, interleaved, context "
               f"{r['context']}")
    for n in names:
        click.echo(f"  {n}: {r[n]['median']:.1f} us ({r[n]['lo']:.1f}-{r[n]['hi']:.1f})")
    for n, q in r["ratios"].items():
        click.echo(f"  {names[0]}/{n} {q['median']:.3f} ({q['ci'][0]:.3f}-{q['ci'][1]:.3f}, "
                   f"{q['n']} pairs)")
    from microbench.kernels import gemv, gemv_mma
    for k in (gemv._gemv_kernel, gemv_mma.gemv_mma_kernel, RSA._rope_attend_kernel):
        for c in k.device_caches[torch.cuda.current_device()][0].values():
            click.echo(f"  compiled {k.fn.__name__}: {c.n_regs} registers, {c.n_spills} "
                       f"spills, {c.metadata.shared} B shared, {c.metadata.num_warps} warps")


if __name__ == "__main__":
    sys.exit(main())
