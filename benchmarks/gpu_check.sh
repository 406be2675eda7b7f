#!/usr/bin/env bash
# The prepared GPU check (issues 27, 32): one command, one report file, at most 8 minutes on a GPU
# (the steps' time limits add up to 480 s; tests/test_train_throughput.py checks the sum).
#
#   bash benchmarks/gpu_check.sh [REPORT]
#
# REPORT defaults to $OUT/gpu_check_report.md when $OUT is set (the device tool's folder), else
# ./gpu_check_report.md. PYTHON picks the interpreter (default: .venv/bin/python when present,
# else python3). With CUDA it runs, the most important first, each under its own time limit (a
# borrowed GPU may be taken back after a few minutes):
#   1. pytest -m cuda tests/test_cuda.py          (the CUDA tests: is it right at all)
#   2. deit benchmark: DeiT-Ti/S/B 224, AMP (bf16 where the GPU has it, else fp16), the largest
#      power-of-two batch that fits (deit benchmark's default on CUDA), peak memory
#   3. benchmarks/train_throughput.py: DeiT-S 224 with AMP, batch 128: the bare step, deit
#      train's loop with 8 persistent loader workers on synthetic ImageFolder JPEGs, a loop
#      assembled from timm's parts; each side's peak GPU memory
#   4. benchmarks/gpu_vs_timm.py: ours against timm's same models, same weights and autocast,
#      the largest batch that fits timm's model, alternating rounds, peak memory of each
#   5. nvidia-smi's memory and the card
# Without CUDA it says so in one line and runs the CPU-safe parts (the cuda tests collected and
# skipped, and each script's --quick smoke run) in well under a minute.
set -u
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
REPORT=${1:-${OUT:-.}/gpu_check_report.md}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
status=0

step() {  # step SECONDS TITLE COMMAND...: run with a time limit, note its exit status
    local limit=$1 title=$2
    shift 2
    echo
    echo "## $title"
    echo
    echo "\`$*\` (limit ${limit} s)"
    echo
    echo '```'
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1
    local rc=$?
    echo '```'
    echo
    echo "exit status $rc, $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}

main() {
    echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $("$PYTHON" -c \
        'import torch, timm; print(f"torch {torch.__version__}, timm {timm.__version__}")')"
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
        echo
        echo "No CUDA device here (torch.cuda.is_available() is False): only the CPU-safe parts run."
        step 60 "CUDA tests (collected, skipped)" "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py
        step 60 "deit benchmark (CPU smoke)" "$PYTHON" -m deit.cli benchmark \
            --models deit_tiny_patch16_224 --device cpu --batch-size 2 --warmup 1 \
            --min-time 0.2 --no-latency
        step 60 "ours vs timm (CPU smoke)" "$PYTHON" benchmarks/gpu_vs_timm.py --quick
        step 90 "train throughput (CPU smoke)" "$PYTHON" benchmarks/train_throughput.py --quick
        return $status
    fi
    nvidia-smi -L 2>/dev/null || "$PYTHON" -c 'import torch; print(torch.cuda.get_device_name())'
    local amp
    amp=$("$PYTHON" -c 'import torch; print("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16")')
    echo
    echo "AMP: $amp"
    step 180 "CUDA tests" "$PYTHON" -m pytest -q -m cuda -rs tests/test_cuda.py
    step 90 "deit benchmark, DeiT-Ti/S/B 224, $amp, largest batch that fits" \
        "$PYTHON" -m deit.cli benchmark --device cuda --precision "$amp" --min-time 0.5 \
        --models deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224
    step 120 "train throughput, DeiT-S 224, $amp, batch 128, 8 workers, synthetic JPEGs" \
        "$PYTHON" benchmarks/train_throughput.py --cases small:128 --device cuda --amp "$amp" \
        --workers 8 --jpeg 1024 --rounds 2
    step 80 "ours vs timm, DeiT-Ti/S/B 224, $amp" "$PYTHON" benchmarks/gpu_vs_timm.py \
        --device cuda --amp "$amp" --rounds 2 --min-time 0.3
    step 10 "GPU memory" nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
    return $status
}

mkdir -p "$(dirname "$REPORT")"
main 2>&1 | tee "$REPORT"
rc=${PIPESTATUS[0]}
echo
echo "report: $REPORT (every step exited 0: $([ "$rc" -eq 0 ] && echo yes || echo no))"
exit "$rc"
