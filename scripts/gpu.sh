#!/usr/bin/env bash
# One call on the lent GPU machine: install, run the GPU test suite, then the benchmarks named
# in $STAGES (default: tests kernels sweep). Full logs and the new results go under $OUT
# (results packed into one tar); a short table is printed last.
#   usage (on the device):  bash scripts/gpu.sh [stage ...]
#   stages: tests, kernels, sweep, sweep3 (three back-to-back default sweeps), launch, arms,
#           arms-split, reproduce, reproduce-smoke, probe, probe-gemv, timeline, host, sweep-gpu
set -u -o pipefail
export PYTHONUNBUFFERED=1
# the device's copy of the tree has no .git: pass the revision in, e.g.
#   MICROBENCH_GIT_REV=$(git rev-parse --short=12 HEAD) bash scripts/gpu.sh   (hash spelled out)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
stages=${*:-tests kernels sweep}
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { cat "$OUT/install.log"; exit 1; }
{ nvidia-smi; python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } \
  >"$OUT/device.txt" 2>&1
head -20 "$OUT/device.txt"
new=$(mktemp -d)
summary=()
for st in $stages; do
  t0=$(date +%s)
  case $st in
    tests)
      python3 -m pytest ${TESTS:-tests} -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
      rc=$?; summary+=("tests: $(tail -1 "$OUT/tests.log")") ;;
    kernels)
      microbench kernels --out "$new" 2>&1 | tee "$OUT/kernels.log"; rc=$? ;;
    reproduce)
      /usr/bin/time -f "wall %e s" microbench reproduce --out "$new" 2>&1 | tee "$OUT/reproduce.log"; rc=$? ;;
    reproduce-smoke)
      microbench reproduce --preset tiny --context 32 --time-budget 0.05 --steps 2 --out "$OUT/smoke" \
        --quiet 2>&1 | tail -30; rc=$? ;;
    probe-gemv)
      # the skinny matmul's configs against cuBLAS; the log is the result (commit it under logs/)
      python3 scripts/probe_gemv.py 2>&1 | tee "$OUT/probe-gemv.log"; rc=$? ;;
    timeline)
      # where a synchronised bs-1 graph step's time goes (the log is the result)
      python3 scripts/probe_timeline.py 2>&1 | tee "$OUT/timeline.log"; rc=$? ;;
    host)
      # what a synchronised bs-1 graph step costs beyond its GPU time (the log is the result)
      python3 scripts/probe_host.py 2>&1 | tee "$OUT/host.log"; rc=$? ;;
    sweep-gpu)
      # a sweep's bs-1 step against a probe runner's, in one process (the log is the result)
      python3 scripts/probe_sweep_gpu.py 2>&1 | tee "$OUT/sweep-gpu.log" | grep -v "^bs \|Capturing"; rc=$? ;;
    probe)
      python3 scripts/probe_replay.py 2>&1 | tee "$OUT/probe.log"; rc=$? ;;
    launch)
      microbench launch --out "$new" 2>&1 | tee "$OUT/launch.log"; rc=$? ;;
    sweep)
      # cold: a fresh Triton cache, so compilation is inside the measured wall time
      for p in opt-125m llama-1b; do
        TRITON_CACHE_DIR=$(mktemp -d) /usr/bin/time -f "wall %e s (cold Triton cache)" \
          microbench sweep --bs 1,4,16,64 --preset $p --out "$new" 2>&1 | tee "$OUT/sweep-$p.log"
      done; rc=$? ;;
    arms)
      # every arm side by side (compile included), per preset in $PRESETS
      for p in ${PRESETS:-opt-125m llama-1b}; do
        microbench sweep --bs ${BS:-1,4,16,64} --preset $p --arms eager,graph,torch-eager,torch-graph,compile \
          --out "$new" 2>&1 | tee "$OUT/arms-$p.log" | grep -v "^bs \|Capturing"
      done; rc=$? ;;
    arms-split)
      # the same at bs 1 with each size captured as two graphs (--split-launch)
      for p in ${PRESETS:-opt-125m llama-1b}; do
        microbench sweep --bs 1 --preset $p --arms eager,graph,torch-eager,torch-graph,compile \
          --split-launch --out "$new" 2>&1 | tee "$OUT/arms-split-$p.log" | grep -v "^bs \|Capturing"
      done; rc=$? ;;
    sweep3pin)
      # the same three sweeps with the process pinned to one CPU core
      for i in 1 2 3; do taskset -c 3 microbench sweep --out "$new" --quiet 2>&1 | tee "$OUT/sweep3pin-$i.log"; done; rc=$? ;;
    sweep3)
      for i in 1 2 3; do microbench sweep --out "$new" --quiet 2>&1 | tee "$OUT/sweep3-$i.log"; done; rc=$? ;;
    *) echo "unknown stage $st"; rc=2 ;;
  esac
  summary+=("$st: rc=$rc in $(( $(date +%s) - t0 )) s")
done
(cd "$new" && tar cf "$OUT/results.tar" .)
echo "== summary"; printf '%s\n' "${summary[@]}"
