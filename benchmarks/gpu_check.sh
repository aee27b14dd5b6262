#!/usr/bin/env bash
# ============================================================================================
# gpu_check.sh — every check that needs a GPU, in one script (run from the repository root on a
# CUDA machine):
#
#   bash benchmarks/gpu_check.sh [PART ...]        PART: env conformance train cupy bench all (default)
#
# Results go to $OUT (the device tool's folder) or ./gpu-results: one JSON report per run plus
# a Markdown summary (conformance.md) to paste into docs/CONFORMANCE.md ("Results on a GPU").
# Exit status: non-zero if any required part failed.
#
# The GPU machine may have no internet: carry wheels that its image lacks (array-api-compat,
# hypothesis, cupy-cuda12x, ...) in .whl/; they are installed into /tmp/site first, then refdiff
# itself (editable, no dependencies). A backend whose library is missing is reported as SKIPPED
# (set REQUIRE_CUPY=1 to make a missing CuPy an error).
#
# Sections are marked "=== PART: name (issue N) ===": add a part by adding a function and a
# line in run_part; keep each part's output under $RES/<part>*.
# ============================================================================================
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-gpu-results}"
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
STATUS=0
SUMMARY="$RES/summary.txt"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

setup() {
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -c "import refdiff._verify" 2>/dev/null \
        || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
        || { echo "cannot install refdiff from $PWD" >&2; exit 1; }
}

# === PART: env (the machine) ====================================================================
part_env() {
    nvidia-smi > "$RES/nvidia-smi.txt" 2>&1 || note "env: nvidia-smi failed"
    "$PY" - > "$RES/env.json" <<'EOF'
import json, platform
from refdiff.backends import list_backends, get_backend
out = {"python": platform.python_version(), "backends": {}}
for info in list_backends():
    try:
        dev = "cuda" if info.name == "torch" else None
        out["backends"][info.name] = get_backend(info.name, device=dev).describe()
    except Exception as exc:  # noqa: BLE001 - report what is missing
        out["backends"][info.name] = {"unavailable": str(exc)}
print(json.dumps(out, indent=2, default=str))
EOF
    note "env: written $RES/env.json, $RES/nvidia-smi.txt"
}

# === PART: conformance (issue 4): torch CUDA and CuPy, float64 and float32 =====================
# The full suite (refdiff-ci profile: derandomized, 12 examples per check, TF32 off during the
# checks), one JSON report per backend; bfloat16 on torch CUDA is run too but is informational
# (opt-in dtype, not required to pass).
verify_one() {  # verify_one NAME SPEC DTYPES REQUIRED
    local name=$1 spec=$2 dtypes=$3 required=$4
    local lib=${spec%%@*}
    if ! "$PY" -c "import $lib" 2>/dev/null; then
        note "conformance $name: SKIPPED ($lib is not installed)"
        [ "$required" = 1 ] && STATUS=1
        return
    fi
    local t0=$SECONDS
    "$PY" -m refdiff verify --backend "$spec" --dtypes "$dtypes" --profile refdiff-ci \
        --json "$RES/conformance_$name.json" > "$RES/conformance_$name.log" 2>&1
    local rc=$?
    local verdict; verdict=$(tail -n 1 "$RES/conformance_$name.log")
    note "conformance $name ($spec, $dtypes): exit $rc in $((SECONDS - t0)) s — $verdict"
    if [ $rc -ne 0 ] && [ "$required" = 1 ]; then STATUS=1; fi
}

part_conformance() {
    verify_one torch_cuda torch@cuda float64,float32 1
    verify_one cupy cupy float64,float32 "${REQUIRE_CUPY:-0}"
    verify_one torch_cuda_bf16 torch@cuda bfloat16 0
    local reports=()
    for f in "$RES"/conformance_*.json; do [ -e "$f" ] && reports+=("$f"); done
    if [ ${#reports[@]} -gt 0 ]; then
        "$PY" -m refdiff.conformance.report --markdown "${reports[@]}" > "$RES/conformance.md"
        note "conformance: Markdown summary in $RES/conformance.md"
    fi
}

# === PART: train (issue 5): training smoke test — owned by the training issue ===================
# Add the GPU training smoke run here (e.g. benchmarks/train_smoke_gpu.py); write to $RES/train*.
part_train() {
    if [ -f benchmarks/train_smoke_gpu.py ]; then
        "$PY" benchmarks/train_smoke_gpu.py --out "$RES/train_smoke" > "$RES/train_smoke.log" 2>&1
        local rc=$?
        note "train: benchmarks/train_smoke_gpu.py exit $rc (log $RES/train_smoke.log)"
        [ $rc -ne 0 ] && STATUS=1
    else
        note "train: SKIPPED (no training smoke script yet)"
    fi
    "$PY" -m pytest -q -m gpu tests/train/test_gpu_smoke.py tests/unet/test_torch_unet.py \
        tests/test_torch_fast.py > "$RES/train_gpu_tests.log" 2>&1
    local rc2=$?
    note "train: pytest -m gpu (training smoke, torch UNet on CUDA, fast paths) exit $rc2 (log $RES/train_gpu_tests.log)"
    [ $rc2 -ne 0 ] && STATUS=1
}

# === PART: cupy (issue 6): the CuPy training path on the GPU ====================================
part_cupy() {
    "$PY" -m pytest -q -m gpu tests/cupy > "$RES/cupy_gpu_tests.log" 2>&1
    local rc=$?
    note "cupy: pytest -m gpu tests/cupy exit $rc (log $RES/cupy_gpu_tests.log)"
    [ $rc -ne 0 ] && STATUS=1
    "$PY" benchmarks/bench_cupy_train.py --json "$RES/cupy_bench.json" > "$RES/cupy_bench.log" 2>&1
    rc=$?
    note "cupy: benchmarks/bench_cupy_train.py exit $rc (log $RES/cupy_bench.log)"
    [ $rc -ne 0 ] && STATUS=1
}

# === PART: bench (issue 7): benchmarks — owned by the performance issue ========================
# benchmarks/gpu_bench.sh runs in parts that fit one 10-minute device call each; call it
# directly for the full set. Here: only its correctness part, if present.
part_bench() {
    if [ -f benchmarks/gpu_bench.sh ]; then
        OUT="$RES" bash benchmarks/gpu_bench.sh check > "$RES/bench_check.log" 2>&1
        local rc=$?
        note "bench: benchmarks/gpu_bench.sh check exit $rc (log $RES/bench_check.log)"
        [ $rc -ne 0 ] && STATUS=1
    else
        note "bench: SKIPPED (no benchmarks/gpu_bench.sh)"
    fi
}

run_part() {
    case "$1" in
        env) part_env ;;
        conformance) part_conformance ;;
        train) part_train ;;
        cupy) part_cupy ;;
        bench) part_bench ;;
        all) part_env; part_conformance; part_train; part_cupy; part_bench ;;
        *) echo "unknown part: $1 (env, conformance, train, cupy, bench, all)" >&2; exit 2 ;;
    esac
}

setup
for part in "${@:-all}"; do run_part "$part"; done
echo "---- summary ($RES/summary.txt)"; cat "$SUMMARY"
exit $STATUS
