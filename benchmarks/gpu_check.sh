#!/usr/bin/env bash
# One-shot device check for a machine with a GPU (under 8 minutes on one GPU):
#   1. the GPU-marked tests (tests/test_gpu.py: training, prediction and the CRF on CUDA);
#   2. training cost at the paper's patch and batch (16x96x96, batch 16, width 16) for CmFNet and
#      pCE: seconds per iteration and peak GPU memory;
#   3. the CRF benchmark (multi-view gated CRF against the unfold-based reference, paper patch and
#      batch) on CUDA and CPU;
#   4. inference of a 150 x 512 x 512 two-channel volume (sliding window, overlap 0.5).
# Steps 2-4 are `cmfnet bench` (docs/benchmarks.md; the CRF step needs the bench extra,
# pip install -e '.[bench]'). CSVs go to results/benchmarks/gpu_*.csv (or $OUT_DIR), each row
# naming the machine, GPU, versions and commit. Commit them with the GPU named in the message.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry    # CPU, tiny sizes: checks the script itself (tests do)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT_DIR:-results/benchmarks}"
mkdir -p "$out"
dry=0
[ "${1:-}" = "--dry" ] && dry=1

python - <<'PY'
import platform, subprocess, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}, "
      f"python {platform.python_version()}, commit {commit or 'unknown'}")
PY

has_unfold=1
python -c "import unfoldNd" 2>/dev/null || has_unfold=0
if [ "$dry" = 1 ]; then
    device=cpu
    training=(--settings smoke --iterations 1 --warmup 1 --threads 1)
    crf=(--batch 1 --patch 8 32 32 --devices cpu)
    inference=(--shape 16 64 64 --patch 16 32 32 --batch 2)
    if [ "$has_unfold" = 0 ]; then
        echo "gpu_check --dry: unfoldNd missing, the CRF step runs ours only (pip install -e '.[bench]')"
        crf+=(--implementations ours)
    fi
else
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (use --dry on a CPU machine)')"
    # fail before the GPU time is spent, not at step 3
    [ "$has_unfold" = 1 ] || { echo "gpu_check: unfoldNd missing: pip install -e '.[bench]'" >&2; exit 2; }
    device=cuda
    training=(--settings paper --iterations 5 --warmup 2)
    crf=(--batch 16 --patch 16 96 96 --devices cuda cpu)
    inference=()
fi

echo "== 1/4 GPU-marked tests"
python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
# `python -m cmfnet.cli` is the cmfnet command of this python (the one the tests run with)
bench=(python -m cmfnet.cli bench)
echo "== 2/4 training cost: CmFNet and pCE"
"${bench[@]}" training --methods cmfnet pce --device "$device" "${training[@]}" --out "$out" --prefix gpu_
echo "== 3/4 CRF: ours against the unfold-based reference"
"${bench[@]}" crf "${crf[@]}" --out "$out" --prefix gpu_
echo "== 4/4 inference"
"${bench[@]}" inference --methods cmfnet pce --device "$device" "${inference[@]}" --out "$out" --prefix gpu_
echo "gpu_check: CSVs in $out: $(cd "$out" && ls gpu_*.csv | tr '\n' ' ')"
