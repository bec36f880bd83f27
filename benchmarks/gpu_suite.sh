#!/usr/bin/env bash
# Builds, checks and times everything on a GPU machine in one call.
#   bash benchmarks/gpu_suite.sh OUT_DIR        (on the device tool: bash benchmarks/gpu_suite.sh "$OUT")
# Writes OUT_DIR/suite.json (all rows + device/version metadata), OUT_DIR/suite.md (the table)
# and OUT_DIR/log.txt. Budget: <= 10 minutes on an H100. Uses the machine's python3 (which
# holds torch+triton there); nothing is downloaded.
set -uo pipefail
out=${1:-${OUT:-benchmarks/results/latest}}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log="$out/log.txt"
status=0
step() { echo "== $*" | tee -a "$log"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$log"

step "build (C++ matcher extension)"
$py -m pip install -q --no-build-isolation --no-deps -e . >>"$log" 2>&1 || { echo "build failed" | tee -a "$log"; status=1; }

# The peer matcher for bench_matching.py, when a session carried its wheel here: fetch it with
# `pip download --no-deps torch-linear-assignment==0.1.0 -d .whl` and pass .whl in the carry list.
if ls .whl/torch_linear_assignment-*.whl >/dev/null 2>&1; then
  step "install torch-linear-assignment (from .whl/)"
  $py -m pip install -q --no-deps .whl/torch_linear_assignment-*.whl >>"$log" 2>&1 || echo "its install failed" | tee -a "$log"
fi

# Each bounded: a kernel that hangs on the GPU (a barrier mismatch, say) must not eat the whole call.
step "GPU correctness tests (gpu-marked: kernels on CUDA vs eager, bf16/fp16 tolerances, matcher, memory)"
timeout 240 $py -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee -a "$log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
step "device-aware tests on CUDA (whole model fast vs eager; torch.compile through the kernel ops)"
timeout 240 $py -m pytest -q tests/parity/test_fast_vs_eager.py tests/test_compile.py -p no:cacheprovider 2>&1 \
  | tee -a "$log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

jsons=()
for bench in benchmarks/bench_group_norm_act.py benchmarks/bench_attention.py \
             benchmarks/bench_mask_costs.py benchmarks/bench_mask_losses.py \
             benchmarks/bench_matching.py benchmarks/bench_model.py; do
  [ -f "$bench" ] || { echo "missing $bench" | tee -a "$log"; status=1; continue; }
  name=$(basename "$bench" .py)
  step "$name"
  timeout 150 $py "$bench" --json "$out/$name.json" 2>&1 | tee -a "$log" | tail -20
  [ "${PIPESTATUS[0]}" -eq 0 ] && jsons+=("$out/$name.json") || status=1
done

step "summary"
$py benchmarks/merge_results.py "$out/suite.json" "$out/suite.md" "${jsons[@]}" 2>&1 | tee -a "$log"
exit $status
