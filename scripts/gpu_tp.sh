#!/usr/bin/env bash
# One call on a lent two-GPU machine (nvidia-h200-x2): install, the TP tests (gpu-marked ones
# included), the all-reduce benchmark (`launch --tp`), then the TP sweeps of llama-1b and
# llama-8b. Full logs and the new results go under $OUT (results packed into one tar); a short
# table is printed last. Every stage runs under a timeout, and spawned ranks die with their
# parent, so a hung collective costs minutes, not the lease.
#   usage (on the device):  MICROBENCH_GIT_REV=$(git rev-parse --short=12 HEAD) bash scripts/gpu_tp.sh [stage ...]
#   stages: tests, launch, sweep (default: all three), repeat (the sweep of each preset in
#   $PRESETS in $REPEAT fresh processes, default 3: `microbench sweep --tp N --repeat K`, each
#   preset under a $REPEAT_S timeout, default 500 s: one preset per call), probe (scripts/tp_probe.py on
#   $PROBE_PRESET, default llama-8b: the eager step's all-reduces made three ways; with
#   PROBE_RECORDER_OFF=1 once more with PyTorch's NCCL flight recorder and monitoring off);
#   TP (default 2), BUDGET (seconds per
#   measured figure, default 0.3), BS (default 1,4,16,64), PRESETS (default llama-1b llama-8b)
set -u -o pipefail
export PYTHONUNBUFFERED=1
# NVLink multicast stays off (already set on the lent machines; kept for any other)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
OUT=${OUT:-/tmp/out}
TP=${TP:-2}
BUDGET=${BUDGET:-0.3}
BS=${BS:-1,4,16,64}
PRESETS=${PRESETS:-llama-1b llama-8b}
mkdir -p "$OUT"
stages=${*:-tests launch sweep}
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { cat "$OUT/install.log"; exit 1; }
{ nvidia-smi; nvidia-smi topo -m
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
"nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())'
  env | grep -E '^(NCCL|TORCH_SYMM|NVSHMEM)' ; } >"$OUT/device.txt" 2>&1
head -30 "$OUT/device.txt"
new=$(mktemp -d)   # every stage's runs land here (--out), then go into one tar
# packed after every stage, so a call stopped at its time limit still returns what it made
pack() { (cd "$new" && tar cf "$OUT/results.tar" .); }
summary=()
for st in $stages; do
  t0=$(date +%s)
  case $st in
    tests)
      timeout -k 10 240 python3 -m pytest $(find tests -name 'test_tp*.py' | sort) -q -p no:cacheprovider 2>&1 \
        | tee "$OUT/tests-tp.log" | tail -15
      rc=$?; summary+=("tests: $(tail -1 "$OUT/tests-tp.log")") ;;
    launch)
      timeout -k 10 150 microbench launch --tp "$TP" --time-budget "$BUDGET" --out "$new" 2>&1 \
        | tee "$OUT/launch-tp.log"; rc=$? ;;
    sweep)
      rc=0
      for p in $PRESETS; do
        /usr/bin/time -f "wall %e s" timeout -k 10 300 microbench sweep --tp "$TP" --preset "$p" \
          --bs "$BS" --time-budget "$BUDGET" --out "$new" 2>&1 | tee "$OUT/sweep-tp-$p.log"
        r=$?; [ $r -ne 0 ] && rc=$r
      done ;;
    repeat)
      rc=0
      for p in $PRESETS; do
        /usr/bin/time -f "wall %e s" timeout -k 10 "${REPEAT_S:-500}" microbench sweep --tp "$TP" --preset "$p" \
          --bs "$BS" --time-budget "$BUDGET" --repeat "${REPEAT:-3}" --out "$new" 2>&1 \
          | tee "$OUT/repeat-tp-$p.log"
        r=$?; [ $r -ne 0 ] && rc=$r
      done ;;
    probe)
      timeout -k 10 240 python3 scripts/tp_probe.py --preset "${PROBE_PRESET:-llama-8b}" --tp "$TP" \
        2>&1 | tee "$OUT/tp-probe.log"; rc=$?
      if [ -n "${PROBE_RECORDER_OFF:-}" ]; then
        TORCH_NCCL_TRACE_BUFFER_SIZE=0 TORCH_NCCL_ENABLE_MONITORING=0 timeout -k 10 240 \
          python3 scripts/tp_probe.py --preset "${PROBE_PRESET:-llama-8b}" --tp "$TP" 2>&1 \
          | tee -a "$OUT/tp-probe.log"; r=$?; [ $r -ne 0 ] && rc=$r
      fi ;;
    *) echo "unknown stage $st"; rc=2 ;;
  esac
  summary+=("$st: rc=$rc in $(( $(date +%s) - t0 )) s")
  pack
done
echo "== short table"
for f in "$OUT"/sweep-tp-*.log "$OUT"/repeat-tp-*.log; do
  [ -f "$f" ] || continue
  echo "-- $(basename "$f" .log)"
  grep -E '^ *(bs|--|[0-9]+) ' "$f" | grep -v ':' | head -8
  grep -E '^(capture per rank|TP 1( on|:)|all-reduce model|published shape|--repeat|model:|run took|wall)' "$f"
done
[ -f "$OUT/tp-probe.log" ] && grep -E '^( *[0-9]+ +(c10d|nccl|none)|bs [0-9]+:|llama|arm)' "$OUT/tp-probe.log"
[ -f "$OUT/launch-tp.log" ] && grep -E '^(fit|host time)' "$OUT/launch-tp.log"
echo "== summary"; printf '%s\n' "${summary[@]}"
