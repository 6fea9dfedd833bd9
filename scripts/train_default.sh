#!/usr/bin/env bash
# Reproduce saved_models/default.safetensors and its model card figures, on the CPU (about an hour).
#
# Data: the natural photos shipped inside scikit-image's wheel, minus astronaut, chelsea, coffee and rocket
# (held out: examples/images/ are 224x224 crops of them). Features: EfficientNet-Lite0 stage3 (ImageNet).
# Usage: bash scripts/train_default.sh [RUN_DIR]   (run it again with the same RUN_DIR to resume)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/default}"
NRP="${NRP:-.venv/bin/nrp}"
PY="${PY:-.venv/bin/python}"

# 1. Train (1200 steps of 8 crops of 64x64 px; resumes from RUN_DIR/checkpoint.pt if there is one).
RESUME=()
[[ -f "$RUN_DIR/checkpoint.pt" ]] && RESUME=(--resume)
"$NRP" train --data skimage --out "$RUN_DIR" "${RESUME[@]}" \
    --architecture NRP_resG --nf 64 --nb 6 \
    --feature-model efficientnet_lite0 --feature-layer stage3 \
    --steps 1200 --batch-size 8 --crop 64 --lr 3e-4 --lr-min 1e-5 \
    --ssp-iterations 4 --ssp-step 0.02 --eps-min-fraction 0.5 \
    --clean-fraction 0.2 --noise-fraction 0.25 --feature-weight 1 --pixel-weight 5 \
    --seed 0 --threads 1 --checkpoint-every 50 --log-every 10

# 2. Measure on held-out photos: the example crops (published attack strengths: SSP 100 iterations,
#    PGD 10) and the four held-out originals at their own size (20 iterations each, to keep it short).
WEIGHTS="$RUN_DIR/purifier.safetensors"
"$NRP" eval examples/images --model "$WEIGHTS" --attacks none,ssp,pgd-bpda,pgd-full --seed 0 \
    --out "$RUN_DIR/eval_examples" --no-progress
SKDATA="$("$PY" -c 'import pathlib, skimage; print(pathlib.Path(skimage.__file__).parent / "data")')"
"$NRP" eval "$SKDATA"/{astronaut.png,chelsea.png,coffee.png,rocket.jpg} --model "$WEIGHTS" \
    --attacks none,ssp,pgd-bpda --iterations 20 --seed 0 --out "$RUN_DIR/eval_heldout_originals" --no-progress

# 3. Ship: saved_models/default.safetensors + its manifest entry (provenance and the figures above).
"$NRP" train --out "$RUN_DIR" --publish default \
    --metrics examples="$RUN_DIR/eval_examples/report.json" \
    heldout_originals="$RUN_DIR/eval_heldout_originals/report.json"
