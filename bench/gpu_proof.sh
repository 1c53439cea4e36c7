#!/usr/bin/env bash
# The GPU proof in one command (issue 23): build for sm_90, every GPU test, compute-sanitizer on
# every kernel, the benchmark rows; each step time-boxed, its log and JSON under $OUT as it goes.
#
#   bash bench/gpu_proof.sh --stamp        # here, before the device call: the commit, for a tree without .git
#   bash bench/gpu_proof.sh                # on the GPU machine (OUT set by the device tool)
#   bash bench/gpu_proof.sh --dry-run      # anywhere, no GPU: every step's plumbing on tiny shapes (CI)
#
# Environment (all optional):
#   OUT                  results folder (required on a GPU; the dry run makes a temporary one)
#   PF_PROOF_DRY_RUN=1   same as --dry-run
#   PF_PROOF_PYTHON      interpreter (default python3: the image's torch python)
#   PF_PROOF_STEPS       comma list, in this order of importance: build,tests,memcheck,racecheck,bench
#                        (empty: none, e.g. with PF_PROOF_ICL=1 for the study alone)
#   PF_PROOF_TOTAL_S     whole-run budget in seconds (default 465: under 8 minutes with the reporting)
#   PF_PROOF_<STEP>_S    a step's own budget (BUILD 120, TESTS 150, MEMCHECK 45, RACECHECK 15, BENCH 120);
#                        time a step leaves unused goes to the steps after it
#   PF_PROOF_BUILD=cmake skip the pip editable install, build with plain cmake (the fallback)
#   PF_PROOF_WORKERS     pytest-xdist workers for the tests step (default 8; 0: no xdist)
#   PF_PROOF_BENCH_ARGS  arguments of bench/bench_gpu.py (default: the issue's rows)
#   PF_PROOF_ICL=1       last, the ICL study: `scripts/icl_gpu.sh [--dry-run] $OUT/icl` (PF_PROOF_ICL_SCRIPT)
#                        with PYTHON and ICL_GPU_BUDGET (its limit less 15 s), time-boxed by what is
#                        left (PF_PROOF_ICL_S caps it); the proof's logs are packed into
#                        proof-logs.tar.gz first, and $OUT/icl into icl.tar.gz (15 MiB parts) after
#
# Files under $OUT (the device tool returns at most 8, 16 MiB each, 64 MiB in all): proof.json (the record: environment,
# commit, build path, test counts and failures, sanitizer verdicts, every step's status and time),
# build.log, tests.log, tests.jsonl (one line per test, written as they finish), sanitizer.log,
# bench.log, gpu-<UTC>.json (bench/bench_gpu.py's record, rewritten after every case).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

DRY="${PF_PROOF_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --stamp)
      sha="$(git rev-parse HEAD)" || exit 2
      if [ -n "$(git status --porcelain -- python csrc kernels bench tests CMakeLists.txt pyproject.toml)" ]; then
        sha="$sha+uncommitted"
      fi
      echo "$sha" > .gpu_proof_commit && echo "wrote .gpu_proof_commit: $sha"
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_proof.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

PY="${PF_PROOF_PYTHON:-python3}"
if ! command -v "$PY" >/dev/null; then echo "gpu_proof.sh: no interpreter '$PY' (set PF_PROOF_PYTHON)" >&2; exit 2; fi
# Absolute, without resolving links (a virtual environment's python is a link that must stay one).
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; *) PY="$(command -v "$PY")" ;; esac
if [ -z "${OUT:-}" ]; then
  if [ "$DRY" = 1 ]; then OUT="$(mktemp -d /tmp/gpu_proof_dry.XXXXXX)"; else
    echo "gpu_proof.sh: set OUT to the results folder (the device tool sets it)" >&2; exit 2; fi
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
STEPS="${PF_PROOF_STEPS-build,tests,memcheck,racecheck,bench}"  # set but empty: none
[ "${PF_PROOF_ICL:-0}" = 1 ] && STEPS="${STEPS:+$STEPS,}icl"
TOTAL="${PF_PROOF_TOTAL_S:-465}"  # 8 minutes less the reporting around the steps
declare -A BUDGET=([build]="${PF_PROOF_BUILD_S:-120}" [tests]="${PF_PROOF_TESTS_S:-150}"
                   [memcheck]="${PF_PROOF_MEMCHECK_S:-45}" [racecheck]="${PF_PROOF_RACECHECK_S:-15}"
                   [bench]="${PF_PROOF_BENCH_S:-120}" [icl]=0)
IFS=, read -r -a SELECTED <<< "$STEPS"
for s in "${SELECTED[@]}"; do
  [ -n "${BUDGET[$s]+x}" ] || { echo "gpu_proof.sh: PF_PROOF_STEPS: unknown step '$s' (build,tests,memcheck,racecheck,bench,icl)" >&2; exit 2; }
done
for v in "$TOTAL" "${BUDGET[@]}"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "gpu_proof.sh: budgets must be whole seconds, got '$v'" >&2; exit 2; }
done

# The commit, for a tree copied without .git (bench/_timing.git_rev reads PF_GIT_COMMIT).
if [ -z "${PF_GIT_COMMIT:-}" ] && [ -f .gpu_proof_commit ] && ! git rev-parse HEAD >/dev/null 2>&1; then
  export PF_GIT_COMMIT="$(cat .gpu_proof_commit)"
fi
BENCH_ARGS="${PF_PROOF_BENCH_ARGS:---n 131072,1048576 --d 768 --ops knn,hsic,screen,mutual_knn --max-repeats 2}"
ICL_SCRIPT="${PF_PROOF_ICL_SCRIPT:-scripts/icl_gpu.sh}"
export OUT DRY PY ROOT BENCH_ARGS ICL_SCRIPT PYTHONUNBUFFERED=1
export PF_PROOF_BUILD_PATH_FILE="${TMPDIR:-/tmp}/pf_proof_build_path.$$"
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1    # the rehearsal: Triton's CPU interpreter, tiny shapes
else
  export TRITON_INTERPRET=0    # the proof: Triton compiles for the GPU, never interprets
  export PLATONIC_FAST_CUDA=ON PLATONIC_FAST_CUDA_ARCHS=90
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
fi
export PYTHONPATH="$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}"

# ---- step bodies (run by `timeout ... bash -c step_<name>`) ---------------------------------

_configure() {  # build-dir cuda(ON|OFF): the fallback's configure, plain cmake + pip's pybind11
  local gen=() pyb=() dir
  command -v ninja >/dev/null && gen=(-G Ninja)
  dir="$("$PY" -m pybind11 --cmakedir 2>/dev/null)" && pyb=(-Dpybind11_DIR="$dir")
  cmake -S . -B "$1" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DPLATONIC_FAST_CUDA="$2" \
        -DPLATONIC_FAST_CUDA_ARCHS=90 -DPython_EXECUTABLE="$PY" "${pyb[@]}"
}

step_build() {
  set -u -o pipefail
  "$PY" -c "import scikit_build_core, pybind11; print('scikit-build-core', scikit_build_core.__version__, 'pybind11', pybind11.__version__)"
  cmake --version | head -1; ninja --version
  if [ "$DRY" = 1 ]; then
    # The rehearsal checks the tools and the fallback's cmake arguments; it keeps the existing build.
    _configure "$OUT.cmake-dry" OFF >/dev/null || return 1
    rm -rf "$OUT.cmake-dry"
    echo "dry-run: existing build" > "$PF_PROOF_BUILD_PATH_FILE"
    return 0
  fi
  command -v nvcc && nvcc --version | tail -2
  if [ "${PF_PROOF_BUILD:-pip}" = pip ] && "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null \
     && command -v cmake >/dev/null; then
    echo "== pip install --no-build-isolation --no-deps --no-index -e . (PLATONIC_FAST_CUDA_ARCHS=90)"
    if "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .; then
      echo "pip editable (scikit-build-core)" > "$PF_PROOF_BUILD_PATH_FILE"
      return 0
    fi
    echo "== pip path failed; falling back to plain cmake"
  fi
  _configure build/proof ON || return 1
  cmake --build build/proof --parallel || return 1
  cp --remove-destination build/proof/_core*.so python/platonic_fast/ || return 1
  # The package maps platonic_fast.triton to kernels/triton (pyproject); from python/ it is a link.
  [ -e python/platonic_fast/triton ] || ln -s ../../kernels/triton python/platonic_fast/triton || return 1
  echo "cmake + python/ on PYTHONPATH" > "$PF_PROOF_BUILD_PATH_FILE"
}

step_tests() {
  set -u -o pipefail
  local args=(-m pytest -m gpu -p gpu_proof_plugin -p no:cacheprovider -q --durations=15
              "--junitxml=$OUT/tests.junit.xml")
  if [ "$DRY" = 0 ]; then
    # Compiling the autotuned Triton variants is CPU work: several workers share the 16 cores, and
    # share tuning results through Triton's disk cache.
    export TRITON_CACHE_AUTOTUNING=1
    local workers="${PF_PROOF_WORKERS:-8}"
    if [ "$workers" != 0 ] && "$PY" -c "import xdist" 2>/dev/null; then args+=(-n "$workers"); fi
    "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout "${PF_PROOF_TEST_TIMEOUT:-120}")
    args+=(tests)
  else
    # Plumbing only: one file's GPU tests, skipped here, through the same plugin and summary.
    args+=(${PF_PROOF_DRY_TESTS:-tests/test_permute_lists.py})
  fi
  PF_PROOF_TESTS_JSONL="$OUT/tests.jsonl" "$PY" "${args[@]}"
}

step_memcheck() { _sanitize memcheck; }
step_racecheck() { _sanitize racecheck --lists-only; }
_sanitize() {
  set -u -o pipefail
  local tool="$1"; shift
  if [ "$DRY" = 0 ] && [ "$tool" = memcheck ]; then
    # Once without the tool: Triton compiles these variants into its cache outside the sanitizer.
    echo "=== driver alone (warms Triton's cache) ==="
    "$PY" bench/gpu_proof.py driver "$@"
  fi
  echo "=== sanitizer $tool ==="
  if [ "$DRY" = 1 ]; then
    echo "dry run: compute-sanitizer not run; the driver alone, tiny shapes"
    "$PY" bench/gpu_proof.py driver --tiny "$@"
    return
  fi
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer: command not found"; return 127
  fi
  # No caching allocator: each tensor is its own allocation, so an overrun is seen.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 30 \
    "$PY" bench/gpu_proof.py driver "$@"
}

step_bench() {
  set -u -o pipefail
  if [ "$DRY" = 1 ]; then
    # The GPU run's arguments, checked and planned (nothing runs), then the harness on tiny shapes.
    # shellcheck disable=SC2086
    "$PY" bench/bench_gpu.py $BENCH_ARGS --out "$OUT" --plan || return 1
    "$PY" bench/bench_gpu.py --smoke --ops knn,hsic,screen,mutual_knn --max-repeats 1 --out "$OUT"
  else
    # shellcheck disable=SC2086
    "$PY" bench/bench_gpu.py $BENCH_ARGS --out "$OUT"
  fi
}

step_icl() {
  set -u -o pipefail
  local dry=()
  [ "$DRY" = 1 ] && dry=(--dry-run)
  mkdir -p "$OUT/icl"
  # The study's interface: icl_gpu.sh [--dry-run] [OUT_FOLDER], with PYTHON and ICL_GPU_BUDGET
  # (seconds; it stops training in time to evaluate and save). 15 s stay for the packing.
  local budget=$((PF_STEP_LIMIT > 60 ? PF_STEP_LIMIT - 15 : PF_STEP_LIMIT))
  PYTHON="$PY" ICL_GPU_BUDGET="$budget" PF_PROOF_DRY_RUN="$DRY" bash "$ICL_SCRIPT" "${dry[@]}" "$OUT/icl"
}
export -f _configure step_build step_tests step_memcheck step_racecheck _sanitize step_bench step_icl

# ---- the time box ---------------------------------------------------------------------------

START=$SECONDS
FAILED=0
record() {  # name status rc seconds limit [note...]
  local name="$1" status="$2" rc="$3" secs="$4" limit="$5"; shift 5
  "$PY" bench/gpu_proof.py step --out "$OUT" --name "$name" --status "$status" --rc "$rc" \
        --seconds "$secs" --limit "$limit" ${1:+--note "$@"} || FAILED=1
}

run_step() {  # name log: the step's limit is its budget plus what earlier steps left unused
  local name="$1" log="$2" reserve=0 after=0 s
  for s in "${SELECTED[@]}"; do
    [ "$after" = 1 ] && reserve=$((reserve + BUDGET[$s]))
    [ "$s" = "$name" ] && after=1
  done
  local left=$((TOTAL - (SECONDS - START)))
  local limit=$((left - reserve))
  [ "$limit" -lt "${BUDGET[$name]}" ] && limit="${BUDGET[$name]}"
  [ "$name" = icl ] && limit="${PF_PROOF_ICL_S:-$left}"
  [ "$limit" -gt "$left" ] && limit="$left"
  if [ "$limit" -lt 5 ]; then
    echo "== $name: skipped, the total budget (${TOTAL}s) is spent"
    record "$name" skipped 0 0 "$limit" "total budget spent"; FAILED=1; return
  fi
  echo "== $name (limit ${limit}s, log $log)"
  local t0=$SECONDS rc
  PF_STEP_LIMIT="$limit" timeout -k 10 -s INT "$limit" bash -c "step_$name" >>"$OUT/$log" 2>&1
  rc=$?
  local secs=$((SECONDS - t0)) status=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; elif [ "$rc" != 0 ]; then status=failed; fi
  [ "$status" = ok ] || FAILED=1
  echo "   $name: $status (rc $rc, ${secs}s)"
  tail -n 3 "$OUT/$log" | cut -c1-160 | sed 's/^/   | /'
  record "$name" "$status" "$rc" "$secs" "$limit"
}

echo "gpu_proof: OUT=$OUT dry_run=$DRY steps=$STEPS total=${TOTAL}s"
"$PY" bench/gpu_proof.py env --out "$OUT" $([ "$DRY" = 1 ] && echo --dry-run) > "$OUT/build.log" 2>&1 \
  || { echo "gpu_proof: the environment step failed:"; tail -20 "$OUT/build.log"; FAILED=1; }

for step in "${SELECTED[@]}"; do
  case "$step" in
    build)
      run_step build build.log
      path="$(cat "$PF_PROOF_BUILD_PATH_FILE" 2>/dev/null || echo "none (the build failed)")"
      case "$path" in cmake*) export PYTHONPATH="$ROOT/python:$PYTHONPATH" ;; esac
      "$PY" bench/gpu_proof.py build --out "$OUT" --path "$path" $([ "$DRY" = 0 ] && echo --expect-cuda) \
        >> "$OUT/build.log" 2>&1 || { echo "   platonic_fast._core: no import or no sm_90 kernels (build.log)"; FAILED=1; } ;;
    tests)
      run_step tests tests.log
      "$PY" bench/gpu_proof.py tests --out "$OUT" && rm -f "$OUT/tests.junit.xml" ;;
    memcheck|racecheck)
      run_step "$step" sanitizer.log
      "$PY" bench/gpu_proof.py sanitizer --out "$OUT" --tool "$step" --log "$OUT/sanitizer.log" ;;
    bench)
      run_step bench bench.log ;;
    icl)
      if [ ! -f "$ICL_SCRIPT" ]; then
        echo "== icl: skipped, $ICL_SCRIPT is not in this tree"
        record icl skipped 0 0 0 "$ICL_SCRIPT is not in this tree"
      else
        # Room for the study's files: the proof's logs go into one archive first.
        (cd "$OUT" && tar czf proof-logs.tar.gz --remove-files $(ls build.log tests.log tests.jsonl sanitizer.log bench.log 2>/dev/null))
        run_step icl icl.log
        # Whatever the study wrote, as one archive (in 15 MiB parts: the tool returns 16 MiB a file).
        if [ -d "$OUT/icl" ]; then
          (cd "$OUT" && tar czf icl.tar.gz icl && rm -rf icl \
            && if [ "$(stat -c %s icl.tar.gz)" -gt $((15 * 1024 * 1024)) ]; then
                 split -b 15M -d icl.tar.gz icl.tar.gz.part- && rm icl.tar.gz; fi)
        fi
      fi ;;
  esac
done

"$PY" bench/gpu_proof.py report --out "$OUT" || FAILED=1
rm -f "$PF_PROOF_BUILD_PATH_FILE"
echo "gpu_proof: $( [ "$FAILED" = 0 ] && echo "every step ok" || echo "some step failed or timed out" ) in $((SECONDS - START))s; results in $OUT"
exit "$FAILED"
