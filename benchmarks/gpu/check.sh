#!/usr/bin/env bash
# The GPU check of issue 19, in one command: the CUDA tests (pytest -m cuda), the planner's
# memory model against measured training steps (memory_model.py) and training / prediction
# speed beside nnU-Net v2's network (speed.py). About 5 minutes on one H100; each step has a
# time limit so that the whole stays under 8 minutes.
#
#   bash benchmarks/gpu/check.sh [--out DIR]     # on a machine with a CUDA GPU
#   bash benchmarks/gpu/check.sh --smoke         # anywhere: CUDA tests skip, scripts run tiny on the CPU
#
# Writes DIR/gpu_check.json and DIR/gpu_check.md (DIR: --out, else $OUT when set, else
# benchmarks/_work/gpu), the parts under DIR/parts/, prints the device name and the report,
# and exits non-zero when any check fails.
#
# A fresh checkout needs only `pip install -e .` (with pytest) in an environment whose torch
# sees the GPU. A GPU machine without a package index needs the wheels carried to it: a CUDA
# build of torch, and for the nnU-Net columns nnunetv2 and dynamic-network-architectures with
# their dependencies (`pip download nnunetv2 -d wheels/` beforehand, then
# `pip install --no-index --find-links wheels/ nnunetv2` there). Without nnU-Net its columns
# say "not importable" and the check still runs.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
SMOKE=0
OUTDIR="${OUT:-$ROOT/benchmarks/_work/gpu}"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out) OUTDIR="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (use --smoke, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUTDIR/parts"
OUTDIR="$(cd "$OUTDIR" && pwd)"
rm -f "$OUTDIR"/parts/cuda_tests.xml "$OUTDIR"/parts/memory_model.json "$OUTDIR"/parts/speed.json
cd "$ROOT"

DEVICE="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no CUDA GPU visible)")')" || {
    echo "cannot import torch with $PYTHON" >&2; exit 2; }
echo "device: $DEVICE"
if [ "$SMOKE" = 1 ]; then
    SCRIPT_ARGS=(--device cpu --smoke)
    LIMITS=(900 900 900)  # a busy CPU is slow; the 8-minute budget is for the GPU run
else
    if [[ "$DEVICE" == none* ]]; then
        echo "no CUDA GPU visible: run on a GPU machine, or use --smoke for a CPU check of the plumbing" >&2
        exit 2
    fi
    SCRIPT_ARGS=(--device cuda)
    LIMITS=(230 110 120)  # seconds for: CUDA tests, memory model, speed (sum + start-up < 8 minutes)
fi

echo "== CUDA tests (pytest -m cuda)"
timeout "${LIMITS[0]}" "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider \
    tests/test_cuda_path.py tests/test_training_distributed.py tests/test_training_launchers.py \
    --junitxml "$OUTDIR/parts/cuda_tests.xml"
TESTS=$?
echo "== planner memory model"
timeout "${LIMITS[1]}" "$PYTHON" benchmarks/gpu/memory_model.py "${SCRIPT_ARGS[@]}" --json "$OUTDIR/parts/memory_model.json"
MEMORY=$?
echo "== speed"
timeout "${LIMITS[2]}" "$PYTHON" benchmarks/gpu/speed.py "${SCRIPT_ARGS[@]}" --json "$OUTDIR/parts/speed.json" --work "$OUTDIR/speed_work"
SPEED=$?

echo "== report"
REPORT_ARGS=("$OUTDIR" --device "$DEVICE" --status "cuda_tests=$TESTS" "memory_model=$MEMORY" "speed=$SPEED")
[ "$SMOKE" = 1 ] && REPORT_ARGS+=(--smoke)
"$PYTHON" benchmarks/gpu/report.py "${REPORT_ARGS[@]}"
RESULT=$?
echo "device: $DEVICE; report: $OUTDIR/gpu_check.md, $OUTDIR/gpu_check.json"
exit $RESULT
