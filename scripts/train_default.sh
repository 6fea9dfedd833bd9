#!/usr/bin/env bash
# Reproduce saved_models/default.safetensors: the default purifier, trained on one CPU thread in about an hour.
#
# Data: the natural photos shipped inside scikit-image's wheel, minus astronaut, chelsea, coffee and rocket
# (held out: they are the example / evaluation images). Features: EfficientNet-Lite0 stage3 (ImageNet).
# Usage: bash scripts/train_default.sh [RUN_DIR]   (run it again with the same RUN_DIR to resume)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/default}"
NRP="${NRP:-.venv/bin/nrp}"
RESUME=()
[[ -f "$RUN_DIR/checkpoint.pt" ]] && RESUME=(--resume)
"$NRP" train --data skimage --out "$RUN_DIR" "${RESUME[@]}" \
    --architecture NRP_resG --nf 64 --nb 6 \
    --feature-model efficientnet_lite0 --feature-layer stage3 \
    --steps 1800 --batch-size 8 --crop 64 --lr 3e-4 --lr-min 1e-5 \
    --ssp-iterations 4 --ssp-step 0.02 --eps-min-fraction 0.5 \
    --clean-fraction 0.2 --noise-fraction 0.25 --feature-weight 1 --pixel-weight 5 \
    --seed 0 --threads 1 --checkpoint-every 50 --log-every 10
