#!/usr/bin/env bash
# ============================================================================================
# benchmarks (issue 7): refdiff's torch backend against diffusers' UNet2DModel on one GPU
# ============================================================================================
# Usage (repository root, on a CUDA machine):
#
#   bash benchmarks/gpu_bench.sh PART [PART ...]
#
# PARTS (each fits in one 10-minute device call; "all" runs them in order):
#   check       GPU correctness first: the fused GroupNorm kernel, the CUDA conformance with it,
#               the CUDA-graphed training step (pytest -m gpu)
#   eager       training: fp32, tf32, bf16, bf16-cl, bf16-cl-graph (refdiff GN: auto and torch)
#   compile     training: bf16-cl-compile          (both models; refdiff GN: torch and triton)
#   compile-ro  training: bf16-cl-compile-ro       (both models)
#   graph       training: bf16-cl-compile-graph    (both models)
#   sample      sampling: DDIM 50 and DPM-Solver++ 20 at batch 256 (CUDA-graphed networks)
#   table       print the combined training table of every bench_*.json in the results folder
#
# BENCH_ARGS (environment) is appended to every bench_train.py call, e.g.
#   BENCH_ARGS="--models diffusers --repeats 3" bash benchmarks/gpu_bench.sh compile-ro
#
# Exit status: non-zero if a part failed (for "check": a GPU correctness test failed).
# benchmarks/gpu_check.sh (all GPU checks) runs the "check" part as its "bench" part.
#
# Results go to $OUT (the device tool's folder) or ./results; each part writes one JSON file.
# The GPU machine has no internet: carry array-api-compat (refdiff's dependency, not on that
# image) and diffusers (optional) as wheels in .whl/ (docs/BENCHMARKS.md); this script installs
# any .whl/*.whl it finds into /tmp/site first, then refdiff itself (editable, no dependencies).
# Combine the JSON files of several calls on any machine with
#   python benchmarks/bench_train.py --table-from results/bench_*.json
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-results}"
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# refdiff itself from the checkout (editable: refdiff.backends maps to backends/)
"$PY" -c "import refdiff.backends.torch.fast" 2>/dev/null \
    || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "cannot install refdiff from $PWD" >&2; exit 1; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1 | tee "$RES/gpu_state.txt"

train() {  # train NAME ARGS...
    local name=$1; shift
    # shellcheck disable=SC2086
    "$PY" benchmarks/bench_train.py --json "$RES/bench_$name.json" "$@" ${BENCH_ARGS:-} 2>&1 \
        | tee "$RES/bench_$name.log"
}

run_part() {
    case "$1" in
        check)
            "$PY" -m pytest -q -m gpu tests/test_torch_fast.py tests/unet/test_torch_unet.py 2>&1 \
                | tee "$RES/gpu_check_fast.log" ;;
        eager)
            train eager --configs fp32,tf32,bf16,bf16-cl,bf16-cl-graph --fused-norm auto,torch ;;
        compile)
            train compile --configs bf16-cl-compile --fused-norm torch,triton --warmup 5 --repeats 5 ;;
        compile-ro)
            train compile_ro --configs bf16-cl-compile-ro --fused-norm torch --warmup 5 --repeats 5 ;;
        graph)
            train graph --configs bf16-cl-compile-graph --fused-norm torch,triton --warmup 5 --repeats 5 ;;
        sample)
            "$PY" benchmarks/bench_sample.py --net graph --json "$RES/sample_graph.json" 2>&1 \
                | tee "$RES/sample_graph.log" ;;
        table)
            "$PY" benchmarks/bench_train.py --table-from "$RES"/bench_*.json ;;
        all)
            local p rc=0
            for p in check eager compile compile-ro graph sample table; do run_part "$p" || rc=1; done
            return $rc ;;
        *)
            echo "unknown part '$1' (check eager compile compile-ro graph sample table all)" >&2; return 2 ;;
    esac
}

[ $# -eq 0 ] && set -- all
STATUS=0
for part in "$@"; do run_part "$part" || STATUS=1; done
exit $STATUS
