"""Write results/README.md: one line per saved run, read from the runs' own run.json."""
import glob
import json
import os

HEAD = """# Measured runs

Every folder here was written by a command of this repository on a lent GPU. Each `run.json`
holds `env` (GPU, driver, clocks, library versions, git revision, the exact command, the date)
and `config` (every option). Nothing here is edited by hand; `microbench show <folder>` prints
any of them. Made with `bash scripts/gpu.sh ...` on `nvidia-h100-x1` and `nvidia-h200` leases, and
`bash scripts/gpu_tp.sh` on an `nvidia-h200-x2` lease (`results/h200x2`); the GPU machine's
copy of the tree has no `.git`, so the revision is passed in as `MICROBENCH_GIT_REV` (runs that
say `None` were made by commit `a476c0d`).

The three sweeps of commit `9925911` ran pinned to one CPU core (`taskset -c 3`, stage
`sweep3pin` of `scripts/gpu.sh`; the pin is not part of the recorded command). Sweeps made
before commit `81bee6f` were removed: they profiled kernels before timing, and the
profiler's hooks slowed every later launch and replay on the host.

The README's reference runs are those of the code as it is: commit `5b55302` (all arms,
`results/h100/20261122-1359*` and `-1400*`; all arms at bs 1, `-1404*` and `-1405*`) and `32bbd3c`
(default sweeps, `-1349*` and `-1350*`; its sweep differs from `5b55302`'s only in the
`torch-graph` arm). Their kernels and decoder are those of `4747730` (all arms, `-1244*`,
`-1246*`), `0ba83cf` (default sweeps, `-1258*`) and `38d6d73` (all arms at bs 1, `-1306*`,
`-1307*`): the embedding rows and sequence lengths in one kernel, attention fused with RoPE and
the KV store, five kernels a layer, down in 2048-wide chunks one ahead (logs
`results/h100/logs/*-4747730.log`, `*-0ba83cf.log`). Those earlier runs measured the device's
launch costs, copy bandwidth, matrix rate and kernel lines before timing the steps, which slowed
the steps' GPU side by 1.5 to 2.5% (README, "How it measures"); the runs of `79c3898`
(`-1337*` to `-1344*`) and the all-arms runs of `32bbd3c` (`-1351*`, `-1353*`) measured them
after, but captured the `torch-graph` arm's runner before the first step, which did the same to
the all-arms runs. The runs of `147403a` (`-1152*` to `-1201*`)
ran the embedding as three PyTorch kernels and down in 4096-wide chunks one after another
(`-1200*` and `-1201*` all arms at bs 1 with `--split-launch`). The runs of `20d43bca4c19` (`-1046*`
to `-1050*`) ran rope_store_kv and attention's reduce kernel (seven kernels a layer). The runs of
`ccfeeded1dbd` (`-1022*` to `-1025*`) ran the
same kernels with the model's kernel lines timed one call per layer; those of `1474df02fa4a`
(`-1041*`, `-1042*`) too, after host-side fixes (their opt-125m lines were timed with the weights
in L2: 22% model error); those of `10e7ed448b4a` (`-1009*` to `-1013*`) ran PDL waiting before
its trigger. Runs before `dc12233` ran the first skinny matmuls (norm and swiglu in the
prologues, no PDL); runs before `31c20b9` predict with the profile measured once at the start of
the run (no per-row host costs, no kernel lines), hence their larger model errors.

Probe logs of this kind (`results/h100/logs/`, `nvidia-h100-x1`, torch 2.11.0+cu130, triton
3.6.0; the revision is in the name): `probe-prefetch-92397cfa626d.log` from
`PROBE_STEPS_ONLY=1 PROBE_PREFETCH=1 bash scripts/gpu.sh probe-gemv` at `92397cf` (the L2
prefetch, reverted after); `host-copy-fa46377.log` from `PROBE_COPY=1 bash scripts/gpu.sh host`;
`sweep-gpu-<rev>.log` from `bash scripts/gpu.sh sweep-gpu`; `sweep-gpu-parts-<rev>.log` from
`cd scripts; for p in PARTS; do PROBE_PART=$p python3 probe_sweep_gpu.py; done` (the parts are
named in the log's lines).

The all-reduce benchmark of `187c6cb` (`results/h200x2/*-launch-tp2-h200`): its `eager_us`
figures timed back-to-back all-reduces with an event on the caller's stream, which does not wait
for NCCL's stream, and read far too low (64 MiB in 12.6 us); the code now times them to a
device-wide synchronise. Its graph figures and fit, and the sweeps' shares, do not use them.

| folder | kind | GPU | driver | torch | triton | git | command |
| --- | --- | --- | --- | --- | --- | --- | --- |
"""


def main():
    lines = []
    for d in sorted(glob.glob("results/*/*/run.json")):
        r = json.load(open(d))
        e = r["env"]
        lines.append(f"| `{os.path.dirname(d)}` | {r.get('kind')} | {e.get('gpu')} | {e.get('driver')} | "
                     f"{e.get('torch')} | {e.get('triton')} | {e.get('git')} | `{e.get('command')}` |")
    with open("results/README.md", "w") as f:
        f.write(HEAD + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
