#!/usr/bin/env bash
# Reproduce the shipped default purifier (v2) and its model card figures, on the CPU.
#
# v2 fine-tunes v1 (the previous default, trained by this script's earlier version on scikit-image's photos)
# on the photo corpus of scripts/build_photo_corpus.py with the paper's objective plus the two fidelity
# terms (identity on clean crops, low-frequency / colour L1). Evaluation: the 12 held-out photos of that
# corpus, the held-out classifier EfficientNet-Lite2 (never used for training or features), attacks crafted
# on it, against no defence, a blur and JPEG in the same table.
# Usage: bash scripts/train_default.sh [RUN_DIR]   (run it again with the same RUN_DIR to resume)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/default}"
NRP="${NRP:-.venv/bin/nrp}"
PY="${PY:-.venv/bin/python}"
V1_COMMIT=3cae84ead2165ae10129e3b8e70dd548382be15f  # the commit that shipped v1
V1_SHA256=8d29b4b424fc55a002e5c83fab901c532cb26a5a616ef47f0b04d418637d4428
mkdir -p "$RUN_DIR"

# 0. Data and start weights: the photo corpus (apt-get and pip downloads, then cached) and v1 from git.
[[ -d corpus/train ]] || "$PY" scripts/build_photo_corpus.py --out corpus
V1="$RUN_DIR/default_v1.safetensors"
[[ -f "$V1" ]] || git show "$V1_COMMIT:saved_models/default.safetensors" > "$V1"
echo "$V1_SHA256  $V1" | sha256sum --check --quiet

# 1. Fine-tune: 120 steps of 8 crops of 64x64 px, then resumed to 220 steps (the cosine restarts at about
#    9e-5 and decays to 1e-5 again). Re-running resumes from RUN_DIR/train/checkpoint.pt.
train() {  # $1: total steps; extra arguments follow
    local steps=$1
    shift
    "$NRP" train --data corpus/train --out "$RUN_DIR/train" "$@" \
        --architecture NRP_resG --nf 64 --nb 6 --no-identity-init --init-weights "$V1" \
        --feature-model efficientnet_lite0 --feature-layer stage3 \
        --steps "$steps" --batch-size 8 --crop 64 --max-zoom 3 --lr 2e-4 --lr-min 1e-5 \
        --ssp-iterations 4 --ssp-step 0.02 --eps-min-fraction 0.5 --clean-fraction 0.25 --noise-fraction 0.25 \
        --feature-weight 1 --pixel-weight 5 --identity-weight 10 --lowfreq-weight 20 --lowfreq-kernel 8 \
        --seed 0 --threads 1 --checkpoint-every 50 --log-every 10
}
CKPT="$RUN_DIR/train/checkpoint.pt"
STEP=0
[[ -f "$CKPT" ]] && STEP=$("$PY" -c "import torch; print(torch.load('$CKPT', weights_only=True)['step'])")
if ((STEP < 120)); then
    if ((STEP > 0)); then train 120 --resume; else train 120; fi
fi
train 220 --resume

# 2. Measure on the held-out photos with the held-out classifier: the 224x224 crops against transfer
#    attacks (SSP on Lite2 features, untargeted and targeted PGD on Lite2 alone, 20 iterations) with the
#    blur and JPEG baselines, the photos at their own size (clean), then white-box PGD through the
#    purifier on four crops: straight-through (BPDA) and expectation over the dynamic noise (EOT).
WEIGHTS="$RUN_DIR/train/purifier.safetensors"
"$NRP" eval corpus/heldout/crops224 --model "$WEIGHTS" --classifier efficientnet_lite2 \
    --ssp-features efficientnet_lite2 --attacks none,ssp,pgd-transfer,pgd-transfer-targeted --iterations 20 \
    --baselines blur,jpeg --seed 0 --out "$RUN_DIR/eval_heldout_crops" --no-progress
"$NRP" eval corpus/heldout/full --model "$WEIGHTS" --classifier efficientnet_lite2 --attacks none \
    --baselines blur,jpeg --seed 0 --out "$RUN_DIR/eval_heldout_full" --no-progress
CROPS=corpus/heldout/crops224
"$NRP" eval "$CROPS"/{skimage-coffee,sklearn-china,ultralytics-bus,mate-ladybird}.png --model "$WEIGHTS" \
    --classifier efficientnet_lite2 --attacks pgd-bpda --iterations 10 --baselines blur,jpeg --seed 0 \
    --out "$RUN_DIR/eval_whitebox" --no-progress
"$NRP" eval "$CROPS"/{skimage-coffee,sklearn-china,ultralytics-bus,mate-ladybird}.png --model "$WEIGHTS" \
    --classifier efficientnet_lite2 --attacks pgd-eot --iterations 10 --eot-samples 2 --baselines blur,jpeg \
    --seed 0 --out "$RUN_DIR/eval_whitebox_eot" --no-progress

# 3. Ship: the default weights + their manifest entry (provenance and the figures above), into the package
#    (nrp_deploy/assets/models/, where the registry's shipped files live).
NRP_DEPLOY_MODELS_DIR=nrp_deploy/assets/models "$NRP" train --out "$RUN_DIR/train" --publish default \
    --metrics heldout_crops="$RUN_DIR/eval_heldout_crops/report.json" \
    heldout_full="$RUN_DIR/eval_heldout_full/report.json" whitebox="$RUN_DIR/eval_whitebox/report.json" \
    whitebox_eot="$RUN_DIR/eval_whitebox_eot/report.json"
