#!/usr/bin/env bash
# The study that chose protocol 7's CT tumour contrast (docs/protocol.md, "The phantom as a benchmark").
#
#   benchmarks/ct_contrast_pilot.sh OUT            # ~6 min on 2 cores
#
# For each range of the tumour's CT mean above muscle in a grid declared before the first run,
# it writes the default phantom (30 cases, seed 0, 32x96x96) with that range, trains FullySup on
# CT alone on fold 0 with the default preset's train and network settings, for seeds 0 and 1,
# and scores the fold's 6 test cases; MR alone once (the range changes only the CT). The rule:
# the smallest range whose CT-only mean test DSC is at least MR-only's, as the paper's Table IV
# has CT (74.4 %) above MR (70.9 %). Prints one line per run: range, channel, seed, DSC (%).
# Everything is written under OUT; nothing else is touched.
set -euo pipefail

OUT="${1:?usage: benchmarks/ct_contrast_pilot.sh OUT}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
cd "$REPO"

phantom() {  # lo hi: the default phantom with the tumour lo-hi HU above muscle on CT
    local data="$OUT/data_$1_$2"
    [[ -d "$data" ]] || python -c "
import sys
from pathlib import Path
import cmfnet.data.phantoms.npc as npc
from cmfnet.data.synth import synthesize
npc.CT_TUMOUR_ABOVE_MUSCLE_HU = (float(sys.argv[1]), float(sys.argv[2]))
synthesize('npc', 30, Path(sys.argv[3]), seed=0, shape=(32, 96, 96), folds=5)" "$1" "$2" "$data"
}

fullysup() {  # lo hi channel seed
    local data="$OUT/data_$1_$2" run="$OUT/run_$1_$2_c$3_s$4"
    {
        cmfnet train --card methods/fullysup.yaml --dataset "$data" --fold 0 --out "$run" \
            --train-config config/config.yaml --set "channels=[$3]" --set network.width=8 \
            --set network.dropout=0 --set "train.seed=$4" --threads 1
        cmfnet predict --model "$run" --dataset "$data" --out "$run/pred" --threads 1
        cmfnet evaluate --pred "$run/pred" --dataset "$data" --fold 0 --out "$run/metrics.csv"
    } > "$run.log" 2>&1
    python -c "import sys, pandas; print(*sys.argv[1:5], round(100 * pandas.read_csv(sys.argv[5]).dsc.mean(), 2))" \
        "$1-$2" "$([[ $3 == 0 ]] && echo CT || echo MR)" "seed" "$4" "$run/metrics.csv"
}

RANGES=("3 12" "10 20" "15 30" "25 45")
for range in "${RANGES[@]}"; do phantom $range; done
fullysup 3 12 1 0 & fullysup 3 12 1 1 & wait
for range in "${RANGES[@]}"; do
    fullysup $range 0 0 & fullysup $range 0 1 & wait
done
