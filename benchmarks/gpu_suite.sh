#!/usr/bin/env bash
# Builds, checks and times everything on a GPU machine in one call.
#   bash benchmarks/gpu_suite.sh OUT_DIR        (on the device tool: bash benchmarks/gpu_suite.sh "$OUT")
# Writes OUT_DIR/suite.json (all rows + device/version metadata), OUT_DIR/suite.md (the table)
# and OUT_DIR/log.txt. Uses $PYTHON (default python3, which holds torch+triton on the GPU
# machines); nothing is downloaded.
#
# Budget: the device tool stops a call at 10 minutes, so the whole suite runs against one
# deadline (SUITE_BUDGET_S, default 560 s): every step gets at most its own limit and at most
# what is left, a step with under 20 s left is skipped (and says so), and the summary is
# rewritten after every benchmark, so a call cut short still returns the tables it finished.
set -uo pipefail
out=${1:-${OUT:-benchmarks/results/latest}}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log="$out/log.txt"
status=0
deadline=$((SECONDS + ${SUITE_BUDGET_S:-560}))
step() { echo "== $* (t=${SECONDS}s)" | tee -a "$log"; }
# limit STEP_LIMIT: seconds this step may take (its own limit, capped by the deadline); 0 = skip
limit() { local left=$((deadline - SECONDS)); [ "$left" -lt 20 ] && echo 0 || echo $(( $1 < left ? $1 : left )); }
# bounded NAME STEP_LIMIT CMD...: runs CMD under timeout, logs it; a kernel that hangs on the GPU
# (a barrier mismatch, say) must not eat the whole call
bounded() {
  local name=$1 t; t=$(limit "$2"); shift 2
  step "$name"
  if [ "$t" -eq 0 ]; then echo "skipped: suite budget spent" | tee -a "$log"; status=1; return 1; fi
  timeout "$t" "$@" 2>&1 | tee -a "$log" | tail -20
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "timed out after ${t}s" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$log"

bounded "build (C++ matcher extension)" 240 $py -m pip install -q --no-build-isolation --no-deps -e . \
  || echo "build failed" | tee -a "$log"

# The peer matcher for bench_matching.py, when a session carried its wheel here: fetch it with
# `pip download --no-deps torch-linear-assignment==0.1.0 -d .whl` and pass .whl in the carry list.
if ls .whl/torch_linear_assignment-*.whl >/dev/null 2>&1; then
  step "install torch-linear-assignment (from .whl/)"
  $py -m pip install -q --no-deps .whl/torch_linear_assignment-*.whl >>"$log" 2>&1 || echo "its install failed" | tee -a "$log"
fi

bounded "GPU correctness tests (gpu-marked: kernels on CUDA vs eager, bf16/fp16 tolerances, matcher, memory)" 150 \
  $py -m pytest -q -m gpu tests -p no:cacheprovider
bounded "device-aware tests on CUDA (whole model fast vs eager; torch.compile through the kernel ops)" 120 \
  $py -m pytest -q tests/parity/test_fast_vs_eager.py tests/test_compile.py -p no:cacheprovider

bounded "parity CLI: R50 2x512^2, fast vs eager against float64 (fp32, then bf16 autocast)" 90 \
  bash -c "$py -m maskformer_fast.parity --json '$out/parity_fp32.json' && $py -m maskformer_fast.parity --amp bf16 --json '$out/parity_bf16.json'"

jsons=()
summarise() { [ "${#jsons[@]}" -gt 0 ] && $py benchmarks/merge_results.py "$out/suite.json" "$out/suite.md" "${jsons[@]}" >/dev/null 2>&1; }
for bench in benchmarks/bench_group_norm_act.py benchmarks/bench_attention.py \
             benchmarks/bench_mask_costs.py benchmarks/bench_mask_losses.py \
             benchmarks/bench_matching.py benchmarks/bench_model.py; do
  [ -f "$bench" ] || { echo "missing $bench" | tee -a "$log"; status=1; continue; }
  name=$(basename "$bench" .py)
  bounded "$name" 120 $py "$bench" --json "$out/$name.json" && jsons+=("$out/$name.json")
  summarise
done

step "summary"
[ -f "$out/suite.md" ] && cat "$out/suite.md" | tee -a "$log"
exit $status
