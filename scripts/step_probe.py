"""Whole graphed steps of one preset's decoders that differ in the fused attention's split count
or in the skinny matmuls' table, interleaved in one process (the sampling of `microbench tune
--ab`: bench.tune.step_ab, AB/BA order, CUDA events, paired ratios with bootstrap intervals).

usage: python scripts/step_probe.py --preset llama-8b --bs 1 --arm default --arm splits=3 \
           --arm table=PATH --arm splits=3,table=PATH

An arm is `default` (the decoder as the sweep builds it) or comma-separated settings:
`splits=N` (every rope_store_attention launch takes N KV splits, 1 to the cache's tiles),
`block_n=N` (its K/V tiles hold N keys: 16, 32, 64 or 128; the split count follows) and
`table=PATH` (the skinny matmuls bound with the gemv table at PATH instead of the device's).
The first arm is the reference of the ratios. Needs a CUDA GPU. This is a probe, for choosing
what to build: a setting worth keeping goes into the decoder or a table, measured by the
toolkit's own commands."""
import importlib
import os
import sys

import click

# rope_store_attention's module (the package re-exports its function under the same name)
RSA = importlib.import_module("microbench.kernels.rope_store_attention")
_FORCED = {"splits": None, "block_n": None}
_fused_plan = RSA.fused_plan
_block_n_for = RSA.block_n_for


def _forced_block_n(device, head_dim, dtype):
    """block_n_for, with the keys per K/V tile the arm being built forces (if any)."""
    return _FORCED["block_n"] or _block_n_for(device, head_dim, dtype)


def _forced_plan(batch, num_kv_heads, max_seq, device, head_dim=128, dtype=None, num_splits=None,
                 capped=False):
    """fused_plan, with the split count the arm being built forces (if any)."""
    if num_splits is None and _FORCED["splits"] is not None:
        num_splits = _FORCED["splits"]
    kw = {} if dtype is None else dict(dtype=dtype)
    return _fused_plan(batch, num_kv_heads, max_seq, device, head_dim, num_splits=num_splits,
                       capped=capped, **kw)


def parse_arm(spec: str) -> dict:
    """'default' -> {}; 'splits=3,table=p.json' -> {'splits': 3, 'table': 'p.json'}."""
    if spec == "default":
        return {}
    out = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("splits", "block_n", "table") or key in out:
            raise click.BadParameter(f"{spec!r}: each setting is splits=N, block_n=N or table=PATH, "
                                     f"once each; or the arm is 'default'", param_hint="--arm")
        if key == "block_n" and value not in ("16", "32", "64", "128"):
            raise click.BadParameter(f"{spec!r}: block_n must be 16, 32, 64 or 128",
                                     param_hint="--arm")
        if key in ("splits", "block_n"):
            if not value.isdigit() or int(value) < 1:
                raise click.BadParameter(f"{spec!r}: splits must be a whole number >= 1",
                                         param_hint="--arm")
            out[key] = int(value)
        else:
            if not os.path.isfile(value):
                raise click.BadParameter(f"{spec!r}: no table file {value}", param_hint="--arm")
            out[key] = value
    return out


@click.command()
@click.option("--preset", required=True)
@click.option("--bs", type=click.IntRange(1, 512), default=1, show_default=True)
@click.option("--arm", "arms", multiple=True, required=True,
              help="default, or splits=N and/or table=PATH (comma-separated); two at least")
@click.option("--rounds", type=click.IntRange(2, 400), default=40, show_default=True)
def main(preset, bs, arms, rounds):
    settings = {spec: parse_arm(spec) for spec in arms}
    if len(settings) < 2:
        raise click.UsageError("--arm: give two different arms at least")
    import torch

    from microbench.bench import tune
    if not torch.cuda.is_available():
        raise click.UsageError("step_probe times graphed steps on a CUDA GPU; none is visible")
    RSA.fused_plan = _forced_plan
    RSA.block_n_for = _forced_block_n
    build = tune._graphed_step

    def build_arm(preset, bs, context, probe_arm=None, **kw):
        s = settings[probe_arm]
        if "table" in s:   # _graphed_step reads the table's path from the variable it names
            os.environ[f"MICROBENCH_PROBE_TABLE_{list(settings).index(probe_arm)}"] = s["table"]
            kw["table_file"] = f"MICROBENCH_PROBE_TABLE_{list(settings).index(probe_arm)}"
        _FORCED.update(splits=s.get("splits"), block_n=s.get("block_n"))
        try:
            return build(preset, bs, context, **kw)
        finally:
            _FORCED.update(splits=None, block_n=None)

    tune._graphed_step = build_arm
    tune.VARIANTS["probe"] = tuple((spec, {"probe_arm": spec}) for spec in settings)
    r = tune.step_ab(preset, bs, "probe", rounds=rounds)
    names = r["arms"]
    click.echo(f"{preset} bs {bs}: graph steps of {', '.join(names)}, interleaved, context "
               f"{r['context']}")
    for n in names:
        click.echo(f"  {n}: {r[n]['median']:.1f} us ({r[n]['lo']:.1f}-{r[n]['hi']:.1f})")
    for n, q in r["ratios"].items():
        click.echo(f"  {names[0]}/{n} {q['median']:.3f} ({q['ci'][0]:.3f}-{q['ci'][1]:.3f}, "
                   f"{q['n']} pairs)")


if __name__ == "__main__":
    sys.exit(main())
