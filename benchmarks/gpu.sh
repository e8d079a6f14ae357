#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA GPU: the GPU tests, then both WeightWatcher
# benchmarks with zooscope's eigenvalues on the GPU (config esd.device: cuda). Each step's output
# goes to the screen and to OUTDIR/<step>.log as it runs, so a run cut short keeps what it did.
#
#   bash benchmarks/gpu.sh OUTDIR
#
# Settings (environment): CORES (default: all of the machine's), DEVICE (default cuda; cpu runs the
# same steps on the CPU, a check of this script), MODELS (bench_weightwatcher's --models), LLM_SCALE
# (bench_llm's --scale, default 1: the 1.1B model). About 7 minutes on a 16-core H200 machine.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
cores=${CORES:-$(nproc)}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
failed=0

step() {  # step NAME COMMAND...: run it, its output to the screen and OUTDIR/NAME.log
    local name=$1
    shift
    echo "== $name ($(date -u '+%Y-%m-%d %H:%M:%S UTC')): $*" | tee "$out/$name.log"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: rc $rc, $((SECONDS - start)) s" | tee -a "$out/$name.log"
    [ "$rc" -eq 0 ] || failed=1
}

{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
                "GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
    echo "CPU cores: $(nproc), using $cores"
} 2>&1 | tee "$out/machine.log"

if [ "$device" = cuda ]; then
    # tests/test_gpu.py skips itself without a GPU: here that is a failure, not a pass
    python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' ||
        { echo "DEVICE=cuda, but torch sees no CUDA GPU here" | tee -a "$out/machine.log"; exit 1; }
    step test_gpu python3 -m pytest -q -rs tests/test_gpu.py
fi
step bench_weightwatcher python3 benchmarks/bench_weightwatcher.py --device "$device" --cores "$cores" \
    --configs same-work,defaults ${MODELS:+--models "$MODELS"}
step bench_llm python3 benchmarks/bench_llm.py --device "$device" --cores "$cores" --scale "${LLM_SCALE:-1}"
exit $failed
