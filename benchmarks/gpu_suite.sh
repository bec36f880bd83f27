#!/usr/bin/env bash
# Builds, checks and times everything on a GPU machine in one call, and returns it in 3 files.
#   bash benchmarks/gpu_suite.sh OUT_DIR        (on the device tool: bash benchmarks/gpu_suite.sh "$OUT")
# OUT_DIR gets exactly suite.json (every step's status, the tests that timed out, the package
# versions, every benchmark row, bench_model's dispatch record and profile, the parity rows),
# suite.md (the same as tables) and log.txt (everything printed). Per-step files live in a
# scratch directory: the device tool returns at most 8 files. Uses $PYTHON (default python3,
# which holds torch+triton on the GPU machines); nothing is downloaded (PIP_NO_INDEX).
#
# Steps, by value (what a cut-short call must already have): versions -> install (Python only)
# -> C++ extension (in the background, waited for before the tests) -> import check of every
# kernel module (on failure every later step is skipped, saying why: bench_model would
# otherwise time eager twice) -> bench_model -> GPU correctness tests -> kernel benchmarks ->
# matcher benchmark -> parity CLI fp32, bf16 -> device-aware tests (whole model, torch.compile).
# One deadline (SUITE_BUDGET_S, default 480 s): a step runs under min(its own limit, what is
# left), a step with under SUITE_MIN_STEP_S (20) left is skipped, and the summary is rewritten
# after every step, so a call cut at the device's 10 minutes still returns what finished.
# pytest runs -v -rA with a per-test timeout (SUITE_TEST_TIMEOUT, 60 s): a hang costs one test
# and is named in suite.md; a step cut by its own limit gets SIGINT (pytest then prints its
# summary) and the test it was running is named too.
# Rehearsal knobs (tests/test_gpu_suite.py): SUITE_STEPS="id id ..." runs only those steps (the
# others are listed as not selected); SUITE_GPU_TESTS replaces the GPU tests' pytest arguments.
set -uo pipefail
out=${1:-${OUT:-benchmarks/results/latest}}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 PIP_NO_INPUT=1
export COLUMNS=400  # pytest cuts its summary lines to the terminal width, "Timeout" with them
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")
log="$out/log.txt"
: > "$log"
steps_tsv="$scratch/steps.tsv"
: > "$steps_tsv"
deadline=$((SECONDS + ${SUITE_BUDGET_S:-480}))
min_step=${SUITE_MIN_STEP_S:-20}
selected=" ${SUITE_STEPS:-all} "
stop_reason=""   # set when the kernels do not import: every later step is skipped with it
status=0
jsons=()

note() { echo "$*" | tee -a "$log"; }

# summarise: rewrite suite.json/suite.md from everything so far; a shell-only suite.md if even that fails
summarise() {
  if ! $py benchmarks/merge_results.py "$out/suite.json" "$out/suite.md" --steps "$steps_tsv" \
        --step-logs "$scratch" ${jsons[@]+"${jsons[@]}"} >/dev/null 2>"$scratch/merge.err"; then
    { echo "# maskformer-fast GPU suite (merge_results.py failed)"; echo; sed 's/^/    /' "$scratch/merge.err"
      echo; echo "id | status | seconds | title"; cat "$steps_tsv"; } > "$out/suite.md"
    sed 's/\\/\\\\/g; s/"/\\"/g; s/\t/ | /g; s/.*/"&"/' "$steps_tsv" | paste -sd, - \
      | sed 's/^/{"error": "merge_results.py failed: see suite.md", "steps": [/; s/$/]}/' > "$out/suite.json"
  fi
}

record() {  # record ID STATUS SECONDS TITLE
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$steps_tsv"
  # a step left out by SUITE_STEPS changes nothing worth rewriting the summary for
  [[ $2 == "skipped: not in SUITE_STEPS" ]] || summarise
}

# begin_step ID OWN_LIMIT TITLE: sets step_limit to the seconds this step may take, or returns 2
# having recorded why it is skipped (not run in $(...): it sets status)
begin_step() {
  local id=$1 own=$2 title=$3 left=$((deadline - SECONDS)) why=""
  note "== $title [$id] (t=${SECONDS}s, ${left}s left)"
  if [[ $selected != " all " && $selected != *" $id "* ]]; then why="not in SUITE_STEPS"
  elif [ -n "$stop_reason" ]; then why=$stop_reason; status=1
  elif [ "$left" -lt "$min_step" ]; then why="suite budget spent (${left}s left)"; status=1
  fi
  if [ -n "$why" ]; then note "skipped: $why"; record "$id" "skipped: $why" 0 "$title"; return 2; fi
  step_limit=$(( own < left ? own : left ))
}

finish_step() {  # finish_step ID RC LIMIT START TITLE
  local id=$1 rc=$2 t=$3 t0=$4 title=$5 st=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then st="timed out after ${t}s"; note "$st"
  elif [ "$rc" -ne 0 ]; then st="failed (rc $rc)"; note "$st"
  fi
  [ "$st" = ok ] || status=1
  record "$id" "$st" $((SECONDS - t0)) "$title"
  [ "$st" = ok ]
}

# run_step ID OWN_LIMIT TITLE CMD...: returns 0 (ok), 1 (failed or timed out) or 2 (skipped). CMD under timeout (SIGINT first, so pytest and Python print
# where they were; SIGKILL 10 s later), its output to the log, its own file and the last 15 lines
# to the console
run_step() {
  local id=$1 own=$2 title=$3 t t0=$SECONDS; shift 3
  begin_step "$id" "$own" "$title" || return 2
  t=$step_limit
  : > "$scratch/$id.out"
  timeout -s INT -k 10 "$t" "$@" 2>&1 | tee -a "$log" "$scratch/$id.out" | tail -n 15 >&2
  finish_step "$id" "${PIPESTATUS[0]}" "$t" "$t0" "$title"
}

bench() {  # bench ID OWN_LIMIT SCRIPT ARGS...: a benchmark whose JSON joins the summary
  local id=$1 own=$2 script=$3; shift 3
  run_step "$id" "$own" "$id" $py "$script" --json "$scratch/$id.json" "$@"
  [ -f "$scratch/$id.json" ] && jsons+=("$scratch/$id.json") && summarise
}

pytest_args=(-v -rA -p no:cacheprovider)
if $py -c "import pytest_timeout" 2>/dev/null; then
  pytest_args+=(-p timeout --timeout="${SUITE_TEST_TIMEOUT:-60}")
else
  note "pytest-timeout is not installed: a hanging test costs its whole step"
fi

run_step versions 15 "device and every package version" \
  bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; \
           $py benchmarks/suite_env.py '$scratch/environment.json'"
[ -f "$scratch/environment.json" ] && jsons+=("$scratch/environment.json") && summarise

# Python only (seconds): the extension is built below, on its own, so a slow or failing compile
# cannot leave the kernels uninstalled. Should pip fail anyway, a symlink makes
# maskformer_fast.kernels importable from this tree (what package_dir maps in setup.py).
install() {
  MASKFORMER_FAST_NO_EXT=1 $py -m pip install -q --no-build-isolation --no-deps -e . && return 0
  echo "pip install failed: linking maskformer_fast/kernels -> ../kernels instead"
  [ -e maskformer_fast/kernels ] || ln -s ../kernels maskformer_fast/kernels
  return 1
}
export -f install
export py
run_step install 40 "install the package (Python only)" bash -c install

if ls .whl/torch_linear_assignment-*.whl >/dev/null 2>&1; then
  run_step peer_matcher 15 "install torch-linear-assignment from .whl/ (bench_matching's peer)" \
    $py -m pip install -q --no-deps .whl/torch_linear_assignment-*.whl
else
  record peer_matcher "skipped: no .whl/torch_linear_assignment-*.whl carried" 0 "install torch-linear-assignment"
fi

# The C++ matcher, in the background while the GPU is busy (niced: bench_model's launches need
# the CPU more); waited for before the tests, which use it.
ext_t0=$SECONDS
if begin_step ext 150 "build the C++ matcher extension (setup.py build_ext --inplace)"; then
  ext_t=$step_limit
  (timeout -s INT -k 10 "$ext_t" nice -n 19 $py setup.py -q build_ext --inplace > "$scratch/ext.out" 2>&1
   echo $? > "$scratch/ext.rc") &
  ext_pid=$!
fi
wait_ext() {
  [ -n "${ext_pid:-}" ] || return 0
  wait "$ext_pid"
  { echo "== (background) C++ extension build output"; cat "$scratch/ext.out"; } >> "$log"
  finish_step ext "$(cat "$scratch/ext.rc" 2>/dev/null || echo 1)" "$ext_t" "$ext_t0" \
    "build the C++ matcher extension (setup.py build_ext --inplace)"
  ext_pid=""
}

import_check="import pathlib, importlib
mods = sorted(p.stem for p in pathlib.Path('kernels').glob('*.py') if p.stem != '__init__')
for m in mods:
    mod = importlib.import_module('maskformer_fast.kernels.' + m)
    print('imported', mod.__name__, 'from', mod.__file__)"
run_step import_check 20 "import every kernel module" $py -c "$import_check"
if [ $? -eq 1 ]; then
  stop_reason="the kernels do not import (see import_check in log.txt): nothing can be timed or tested on them"
  note "STOP: $stop_reason"
fi

bench bench_model 110 benchmarks/bench_model.py --engines eager fast hf  # fast+compile, onnxruntime: the optional second call
wait_ext
read -ra gpu_tests <<< "${SUITE_GPU_TESTS:--m gpu tests}"
run_step gpu_tests 85 "GPU correctness tests (gpu-marked: kernels on CUDA vs eager, bf16/fp16, matcher, memory)" \
  $py -m pytest "${pytest_args[@]}" "${gpu_tests[@]}"
# one benchmark per registered op (maskformer_fast.ops.OPS: a new op's spec names its script)
op_benches=$($py -c "import maskformer_fast as mf; print(*dict.fromkeys(s.benchmark for s in mf.ops.OPS.values()))") ||
  note "the op registry does not import: no per-op benchmark runs"
for id in $op_benches; do
  bench "$id" 25 "benchmarks/$id.py"
done
# separate steps: a failing fp32 run must not cost the bf16 one
for amp in none bf16; do
  name=parity_$([ "$amp" = none ] && echo fp32 || echo bf16)
  run_step "$name" 25 "parity CLI: R50 2x512^2, fast vs eager against float64 (amp $amp)" \
    $py -m maskformer_fast.parity --amp "$amp" --json "$scratch/$name.json"
  [ -f "$scratch/$name.json" ] && jsons+=("$scratch/$name.json") && summarise
done
run_step device_tests 45 "device-aware tests on CUDA (whole model fast vs eager; torch.compile through the kernel ops)" \
  $py -m pytest "${pytest_args[@]}" tests/parity/test_fast_vs_eager.py tests/test_compile.py
wait_ext  # when the tests were skipped

note "== summary (t=${SECONDS}s)"
summarise
cat "$out/suite.md" >> "$log"
grep -A30 "^## Steps" "$out/suite.md" | head -40 >&2
# the device tool returns files up to 16 MiB: keep the log's head and tail
if [ "$(stat -c %s "$log")" -gt 15000000 ]; then
  { head -c 2000000 "$log"; printf '\n[... log cut to fit 16 MiB ...]\n'; tail -c 12000000 "$log"; } > "$scratch/log.cut"
  mv "$scratch/log.cut" "$log"
fi
rm -rf "$scratch"
exit $status
