#!/usr/bin/env bash
# One call on a GPU machine: install this clone, run the GPU test suite and the benchmarks named
# as arguments, and print a short table last. The runs the stages write and their full logs
# (under logs/) go into one tar, $OUT/results-<pid>.tar: the device returns at most 8 files, so
# nothing else is written under $OUT.
#   usage:   MICROBENCH_GIT_REV=$(git rev-parse --short=12 HEAD) bash scripts/gpu.sh [stage ...]
#   stages:  tests            the whole test suite (gpu-marked tests included); TESTS=path narrows it
#                             (TESTS="-m gpu tests" deselects the kernel tests, which carry no mark;
#                             quotes inside it group words: TESTS='tests -k "a or b"')
#            ktests           the kernel tests alone, compiled on the GPU (tests/kernels)
#            kernels          each decode kernel's bandwidth (microbench kernels; KPRESET, KBS, KCTX)
#            tune             the skinny matmuls' configs measured (microbench tune $TUNE_ARGS, e.g.
#                             "--preset llama-8b --rows 1"; default every preset and bucket); the
#                             table is copied to the logs
#            retune           the buckets $RETUNE_ROWS (default 1) tuned again for every preset,
#                             then each preset in $AB_PRESETS timed in whole graph steps with the
#                             new table against the one before (tune --ab --vary previous-table);
#                             both tables go to the logs: keep an entry only where the step agrees
#            sweep            the default sweep of opt-125m and llama-1b, each from a cold Triton cache
#            sweep3           three back-to-back default sweeps (how far the numbers move between runs)
#            repeat           each preset in $PRESETS swept with --repeat 3 (three fresh processes)
#            repeat-modes     the same, with --repeat-mode sequential then interleaved, $ROUNDS
#                             times (default 1) per preset: the two modes' spreads on one host
#            launch           launch, replay, copy and matmul constants (microbench launch)
#            arms             the arms in $ARMS side by side, per preset in $PRESETS, batch sizes $BS
#            trace            a sweep with --trace (a Perfetto trace of one eager and one graphed step)
#                             per preset in $TRACE_PRESETS and batch in $TRACE_BS (both lists
#                             space-separated), and the graphed step's time kernel by kernel and
#                             per position in a layer and per op, named by the step plan
#                             (scripts/trace_marginal.py --layer $TRACE_LAYER: default 5, a
#                             layer's kernels in the fused plan up to 16 rows; 0 for none, as
#                             above 16 rows)
#            ab               whole graph steps of decoders interleaved in one process
#                             (microbench tune --ab), per preset in $AB_PRESETS and per variant in
#                             $VARY (default table: the tuned matmul table against the rule; blas:
#                             cuBLAS against cuBLASLt, AB_ROWS=32,64,128; splits: the fused
#                             attention's mode, at every size the default sweep captures with
#                             AB_ROWS=1,2,4,8,16,24,32,40,48,56,64,72,80,88,96,104,112,120,128;
#                             previous-table: the device's gemv table against the copy at
#                             $MICROBENCH_AB_TABLE) at
#                             the batch sizes $AB_ROWS (default 1)
#            probe            scripts/step_probe.py once per ';'-separated argument set in
#                             $PROBE_ARGS (whole graph steps whose attention split count, keys
#                             per K/V tile, launch or gemv table differ, interleaved in one
#                             process)
#            mlp              scripts/mlp_probe.py once per ';'-separated argument set in
#                             $MLP_ARGS (default --preset llama-1b): a chain of FFNs, the
#                             decoder's two kernels a layer against one kernel with a grid-wide
#                             barrier, interleaved in one process
#            queued           scripts/queued_step.py once per ';'-separated argument set in
#                             $QUEUED_ARGS (default: llama-8b and llama-1b at bs 1, 16 and 64):
#                             the eager step with the host out of the way, against its graph
#            timeline         scripts/attention_timeline.py once per ';'-separated argument set in
#                             $TIMELINE_ARGS (default: bs 1 of opt-125m, llama-1b and llama-8b):
#                             when each program of the fused attention starts, passes its PDL
#                             wait and ends
#            startup          the compile arm's set-up, cold and warm compile caches (microbench startup)
#            headroom         memory-headroom under --gpu-memory-utilization 0.9
#            reproduce        the eight phenomena and their report (stopped after $REPRODUCE_S s)
#            reproduce-smoke  reproduce on the tiny preset in seconds (a quick end-to-end check)
#   default: tests kernels sweep
# MICROBENCH_GIT_REV records the revision in every run (a copy of the tree may have no .git).
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
new=$(mktemp -d)   # every stage's runs land here (--out), then go into one tar with the logs
LOG=$new/logs
mkdir -p "$LOG"
stages=${*:-tests kernels sweep}
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$LOG/install.log" 2>&1 \
  || { cat "$LOG/install.log"; exit 1; }
{ nvidia-smi; python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } \
  >"$LOG/device.txt" 2>&1
head -20 "$LOG/device.txt"
# one tar per call of this script (a second call in the same command keeps the first's)
tarball="$OUT/results-$$.tar"
# written beside the tar under a lock, then renamed over it: the background packer below and a
# stage's own pack take turns, and the device's time limit never returns a half-written tar.
# tar exits 1 when a log grows while it reads it; that tar is still whole.
pack() {
  ( flock 9 || echo "gpu.sh: packing without a lock (no flock)" >&2
    cd "$new" && { tar --warning=no-file-changed -cf "$tarball.part" .; [ $? -le 1 ]; } \
      && mv -f "$tarball.part" "$tarball" ) 9>"$new.lock"
}
# every PACK_S seconds the logs so far, so a stage the time limit stops (a sweep waiting out a
# slow host) still returns what it printed. On TERM it ends its sleep at once, or a pack under
# way first; its output goes nowhere, so nothing it leaves behind holds a caller's pipe open.
( s=; trap 'kill $s 2>/dev/null; exit 0' TERM
  while :; do sleep "${PACK_S:-30}" & s=$!; wait $s; pack; done ) >/dev/null 2>&1 &
packer=$!
stop_packer() { kill $packer 2>/dev/null; wait $packer 2>/dev/null; }
trap stop_packer EXIT
# run_sets SCRIPT LOG SETS: python3 SCRIPT once per ';'-separated argument set in SETS (each
# split on spaces, no glob expansion), output appended to LOG; returns the last failure's status
run_sets() {
  local script=$1 log=$2 sets argv a r rc=0
  IFS=';' read -ra sets <<< "$3"
  for a in "${sets[@]}"; do
    read -ra argv <<< "$a"
    [ ${#argv[@]} -eq 0 ] && continue
    python3 "$script" "${argv[@]}" 2>&1 | tee -a "$log"
    r=$?; [ $r -ne 0 ] && rc=$r
  done
  return $rc
}
summary=()
for st in $stages; do
  t0=$(date +%s)
  case $st in
    tests)
      # the slowest tests named in the log, to see where the suite's device time goes; $TESTS
      # is read as shell words, so a -k expression can be quoted inside it
      eval "targs=(${TESTS:-tests})"
      python3 -m pytest "${targs[@]}" -q -p no:cacheprovider --durations=15 2>&1 \
        | tee "$LOG/tests.log" | tail -15
      rc=$?; summary+=("tests: $(tail -1 "$LOG/tests.log")") ;;
    ktests)
      python3 -m pytest tests/kernels -q -p no:cacheprovider 2>&1 | tee "$LOG/ktests.log" | tail -5
      rc=$?; summary+=("ktests: $(tail -1 "$LOG/ktests.log")") ;;
    kernels)
      microbench kernels --preset ${KPRESET:-llama-8b} --bs ${KBS:-1,16,64} --context ${KCTX:-4096} \
        --out "$new" 2>&1 | tee "$LOG/kernels.log"; rc=$? ;;
    tune)
      microbench tune ${TUNE_ARGS:-} 2>&1 | tee "$LOG/tune.log"; rc=$?
      cp kernels/configs/*.json "$LOG/" ;;
    retune)
      # a tile faster alone can make the step slower, so a re-tune is judged by whole steps:
      # the table before it is kept, the rows $RETUNE_ROWS re-tuned, and each preset's graph
      # steps with the new table timed against the kept one at those rows (--vary previous-table)
      rows=${RETUNE_ROWS:-1}
      before=$(python3 -c 'import torch; from microbench.kernels import gemv_configs as g
print(g.table_path(torch.cuda.get_device_name()))' 2>/dev/null)
      if [ -z "$before" ] || [ ! -f "$before" ]; then
        echo "retune: no gemv table for this GPU (${before:-no CUDA device}) to compare against"; rc=1
      else
        cp "$before" "$LOG/gemv-before.json"
        microbench tune --rows $rows 2>&1 | tee "$LOG/retune.log"; rc=$?
        cp "$before" "$LOG/gemv-after.json"
        for p in ${AB_PRESETS:-opt-125m llama-1b llama-8b}; do
          [ $rc -ne 0 ] && break
          MICROBENCH_AB_TABLE="$LOG/gemv-before.json" microbench tune --ab $p \
            --vary previous-table --rows $rows 2>&1 | tee -a "$LOG/retune-ab.log"
          r=$?; [ $r -ne 0 ] && rc=$r
        done
      fi ;;
    sweep)
      # cold: a fresh Triton cache, so compilation is inside the measured wall time
      rc=0
      for p in opt-125m llama-1b; do
        TRITON_CACHE_DIR=$(mktemp -d) /usr/bin/time -f "wall %e s (cold Triton cache)" \
          microbench sweep --bs 1,4,16,64 --preset $p --out "$new" 2>&1 | tee "$LOG/sweep-$p.log"
        r=$?; [ $r -ne 0 ] && rc=$r
        pack
      done ;;
    sweep3)
      rc=0
      for i in 1 2 3; do
        microbench sweep --out "$new" --quiet 2>&1 | tee "$LOG/sweep3-$i.log"
        r=$?; [ $r -ne 0 ] && rc=$r
      done ;;
    repeat)
      # the default sweep of each preset in $PRESETS, three fresh processes each (--repeat 3)
      rc=0
      for p in ${PRESETS:-opt-125m llama-1b llama-8b}; do
        microbench sweep --bs ${BS:-1,4,16,64} --preset $p --repeat ${REPEAT:-3} --out "$new" 2>&1 \
          | tee "$LOG/repeat-$p.log"
        r=$?; [ $r -ne 0 ] && rc=$r
        pack   # each preset's run kept, should the call's time limit stop the next
      done ;;
    repeat-modes)
      rc=0
      for p in ${PRESETS:-opt-125m llama-1b}; do
        for i in $(seq ${ROUNDS:-1}); do
          for m in sequential interleaved; do
            microbench sweep --bs ${BS:-1,4,16,64} --preset $p --repeat ${REPEAT:-3} \
              --repeat-mode $m --out "$new" 2>&1 | tee "$LOG/repeat-$p-$m-$i.log" \
              | grep -E "worst spread|replaced|kept, no|widest"
            r=$?; [ $r -ne 0 ] && rc=$r
            pack
          done
        done
      done ;;
    launch)
      microbench launch --out "$new" 2>&1 | tee "$LOG/launch.log"; rc=$? ;;
    arms)
      rc=0
      for p in ${PRESETS:-opt-125m llama-1b}; do
        microbench sweep --bs ${BS:-1,4,16,64} --preset $p --arms ${ARMS:-eager,graph,torch-compile} \
          --out "$new" 2>&1 | tee "$LOG/arms-$p.log" | grep -v "^bs \|Capturing"
        r=$?; [ $r -ne 0 ] && rc=$r
        pack
      done ;;
    trace)
      # per preset in $TRACE_PRESETS and batch size in $TRACE_BS: a sweep of that size with
      # --trace, then where its graphed step's time goes kernel by kernel (trace_marginal.py)
      rc=0
      for p in ${TRACE_PRESETS:-opt-125m}; do
        for b in ${TRACE_BS:-1}; do   # one batch size a sweep: the trace is of the first
          microbench sweep --bs $b --preset $p --trace "$new/trace" --out "$new" --quiet 2>&1 \
            | tee "$LOG/trace-$p-bs$b.log" | tail -3
          r=$?; [ $r -ne 0 ] && rc=$r
          t=$(ls -t "$new"/trace/*.trace.json 2>/dev/null | head -1)
          if [ -z "$t" ]; then
            echo "no trace written for $p at bs $b" | tee -a "$LOG/trace-$p-bs$b.log"; rc=1; continue
          fi
          python3 scripts/trace_marginal.py "$t" --layer ${TRACE_LAYER:-5} --preset $p --bs $b 2>&1 \
            | tee -a "$LOG/trace-$p-bs$b.log"
          r=$?; [ $r -ne 0 ] && rc=$r
          gzip "$t"
        done
      done ;;
    ab)
      rc=0
      for p in ${AB_PRESETS:-opt-125m llama-8b}; do
        for v in ${VARY:-table}; do
          microbench tune --ab $p --vary $v --rows ${AB_ROWS:-1} 2>&1 | tee -a "$LOG/ab.log"
          r=$?; [ $r -ne 0 ] && rc=$r
        done
      done
      # --vary pdl, blas and splits record their choices in the device's tables
      cp kernels/configs/pdl_*.json kernels/configs/blas_*.json kernels/configs/splits_*.json \
        "$LOG/" 2>/dev/null ;;
    probe)
      if [ -z "${PROBE_ARGS:-}" ]; then
        echo "probe: set PROBE_ARGS (step_probe.py's arguments, sets separated by ';')" \
          | tee -a "$LOG/probe.log"; rc=2
      else
        run_sets scripts/step_probe.py "$LOG/probe.log" "$PROBE_ARGS"; rc=$?
      fi ;;
    mlp)
      run_sets scripts/mlp_probe.py "$LOG/mlp.log" "${MLP_ARGS:---preset llama-1b}"; rc=$? ;;
    queued)
      run_sets scripts/queued_step.py "$LOG/queued.log" \
        "${QUEUED_ARGS:---preset llama-8b;--preset llama-1b}"; rc=$? ;;
    timeline)
      run_sets scripts/attention_timeline.py "$LOG/timeline.log" \
        "${TIMELINE_ARGS:---preset opt-125m;--preset llama-1b;--preset llama-8b}"; rc=$? ;;
    startup)
      microbench startup --preset opt-125m --bs 1 --timeout 240 --out "$new" 2>&1 | tee "$LOG/startup.log"; rc=$? ;;
    headroom)
      microbench reproduce memory-headroom --preset opt-125m --gpu-memory-utilization 0.9 --out "$new" \
        2>&1 | tee "$LOG/headroom.log" | tail -40; rc=$? ;;
    reproduce)
      timeout -k 10 ${REPRODUCE_S:-580} /usr/bin/time -f "wall %e s" microbench reproduce --out "$new" 2>&1 \
        | tee "$LOG/reproduce.log"; rc=$? ;;
    reproduce-smoke)
      microbench reproduce --preset tiny --context 32 --time-budget 0.05 --steps 2 --out "$new" \
        --quiet 2>&1 | tee "$LOG/reproduce-smoke.log" | tail -30; rc=$? ;;
    *) echo "unknown stage $st"; rc=2 ;;
  esac
  summary+=("$st: rc=$rc in $(( $(date +%s) - t0 )) s")
  # packed after every stage, so a run stopped at its time limit still returns what it made
  pack
done
stop_packer
pack   # after the background packer has stopped, so the tar holds the finished logs
rm -f "$new.lock"
echo "== short table"
for f in "$LOG"/sweep-*.log "$LOG"/sweep3-*.log "$LOG"/repeat-*.log "$LOG"/arms-*.log; do
  [ -f "$f" ] || continue
  echo "-- $(basename "$f" .log)"
  grep -E '^ *(bs|--|[0-9]+) ' "$f" | grep -v ':' | head -8
  grep -E '^(capture:|host us per launch|published shape|model:|run took|wall)' "$f"
done
[ -f "$LOG/reproduce.log" ] && grep -E '^[a-z-]+: (HELD|NOT HELD)' "$LOG/reproduce.log"
echo "== summary"; printf '%s\n' "${summary[@]}"
