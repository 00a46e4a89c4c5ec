pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
for a in "eager,graph" "eager,graph,torch-graph" "eager,graph,compile"; do
  echo "== arms $a"
  timeout 100 microbench sweep --bs 1,4 --preset opt-125m --arms $a --time-budget 0.2 --out /tmp/r --quiet 2>&1 | grep -v "^\s" | grep -iv "warn" | tail -12
done
echo "== blocking, torch-graph"
CUDA_LAUNCH_BLOCKING=1 timeout 100 microbench sweep --bs 1 --preset opt-125m --arms eager,graph,torch-graph --time-budget 0.1 --out /tmp/r --quiet 2>&1 | grep -B2 -A3 "File \"/work" | head -40
