"""Choose the default purifier among a training run's snapshots by a fixed rule on validation photos.

A longer run can drift (towards the identity, or away from clean fidelity), so the weights that ship are
chosen among the snapshots, and never on the held-out photos or with the held-out classifier
(EfficientNet-Lite2): the validation photos are a fixed split of the *training* photos (kept out of
training by scripts/train_default.sh), the judged network is EfficientNet-Lite1 and the attacks are
black-box transfers crafted on EfficientNet-Lite0 (SSP on its stage-3 features; TI-DIM, MI-FGSM on its
logits), which do not depend on the purifier and are crafted once. Each candidate is scored on:

    clean agreement with and without the dynamic defence, and agreement under each attack with and
    without it (the dynamic defence with a fixed noise seed).

The rule: among the candidates that keep clean photos (static clean agreement at least CLEAN_FLOOR, the
default purifier's clean goal), the highest mean of those agreement rates; ties go to the higher clean
PSNR. Without the floor a mean over eight rates let a candidate that lost 4 of 24 clean crops win on one
attacked crop. Every candidate's
row and the choice are written to OUT (JSON) and printed; run again into the same OUT with more candidates
(snapshots appear as a run trains), rows already scored there (same file, same crops and attacks) are kept.

Usage: python scripts/select_snapshot.py VAL_DIR OUT.json CANDIDATE.safetensors [...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from nrp_deploy.attacks.classifiers import load_classifier
from nrp_deploy.attacks.features import build_feature_extractor
from nrp_deploy.attacks.files import images_to_tensor, tensor_to_images
from nrp_deploy.attacks.ssp import ssp_attack
from nrp_deploy.attacks.transfer import transfer_attack
from nrp_deploy.evaluation.metrics import psnr
from nrp_deploy.fileutil import sha256_file, write_json_atomic
from nrp_deploy.images import read_image
from nrp_deploy.models import load_model
from nrp_deploy.models.eager import dynamic_input

RESIZE, CROP = 256, 224
CLEAN_FLOOR = 0.95
EPS, ITERATIONS = 16 / 255, 10
JUDGE, SOURCE = "efficientnet_lite1", "efficientnet_lite0"
NOISE_SEED = 0


def validation_crops(folder: Path) -> torch.Tensor:
    """Two 224 px crops per photo (the two ends of its longer side, shorter side resized to 256), [0, 1]."""
    from PIL import Image

    crops = []
    for path in sorted(folder.glob("*.png")):
        image = Image.fromarray(read_image(path))
        scale = RESIZE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        array = np.asarray(image)
        h, w = array.shape[:2]
        top, left = (h - CROP) // 2, (w - CROP) // 2
        if w >= h:
            crops += [array[top : top + CROP, :CROP], array[top : top + CROP, w - CROP :]]
        else:
            crops += [array[:CROP, left : left + CROP], array[h - CROP :, left : left + CROP]]
    if not crops:
        raise SystemExit(f"{folder}: no PNG photos")
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def on_grid(adversarial: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Adversaries as saved to uint8 files (the attacks' own rounding, held inside the budget)."""
    return images_to_tensor(tensor_to_images(adversarial, tensor_to_images(clean), EPS))


def attacked_inputs(clean: torch.Tensor) -> dict[str, torch.Tensor]:
    features = build_feature_extractor(SOURCE, layer="stage3")
    source = [load_classifier(SOURCE)]
    generator = torch.Generator().manual_seed(0)
    ssp = ssp_attack(clean, features, eps=EPS, step=2 / 255, iterations=ITERATIONS, generator=generator)
    return {
        "clean": clean,
        "ssp": on_grid(ssp, clean),
        **{
            name: on_grid(
                transfer_attack(name, clean, source, eps=EPS, iterations=ITERATIONS, generator=generator),
                clean,
            )
            for name in ("ti-dim", "mi-fgsm")
        },
    }


@torch.no_grad()
def purify(model: torch.nn.Module, x: torch.Tensor, dynamic: bool) -> torch.Tensor:
    if dynamic:
        x = dynamic_input(x, generator=torch.Generator().manual_seed(NOISE_SEED))
    out = torch.cat([model(x[i : i + 4]) for i in range(0, len(x), 4)])
    return (out.clamp(0, 1) * 255).round() / 255


def score(path: Path, inputs: dict[str, torch.Tensor], judge: torch.nn.Module, labels: torch.Tensor) -> dict:
    model = load_model(path).module
    row: dict[str, float | str] = {"candidate": str(path)}
    for name, x in inputs.items():
        for dynamic in (False, True):
            purified = purify(model, x, dynamic)
            with torch.no_grad():
                agree = (judge(purified).argmax(1) == labels).float().mean().item()
            row[f"{name}{'+dynamic' if dynamic else ''}"] = round(agree, 4)
            if name == "clean" and not dynamic:
                row["clean_psnr"] = round(psnr(purified.numpy(), inputs["clean"].numpy(), data_range=1.0), 2)
    rates = [v for k, v in row.items() if k not in ("candidate", "clean_psnr")]
    row["score"] = round(float(np.mean(rates)), 4)
    return row


def _earlier_rows(out: Path, crops: int, undefended: dict[str, float]) -> dict[tuple[str, str], dict]:
    """Rows of an earlier run into ``out`` on the same crops and attacks, by (candidate, sha256).

    Snapshots appear while a run trains; scoring each once lets the selection be run again as they come.
    """
    if not out.is_file():
        return {}
    earlier = json.loads(out.read_text(encoding="utf-8"))
    if earlier.get("crops") != crops or earlier.get("undefended") != undefended:
        return {}
    return {(row["candidate"], row["sha256"]): row for row in earlier["candidates"] if "sha256" in row}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("val_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("candidates", type=Path, nargs="+")
    args = parser.parse_args()
    torch.manual_seed(0)
    clean = validation_crops(args.val_dir)
    judge = load_classifier(JUDGE)
    with torch.no_grad():
        labels = judge(clean).argmax(1)
    inputs = attacked_inputs(clean)
    with torch.no_grad():
        undefended = {
            name: (judge(x).argmax(1) == labels).float().mean().item() for name, x in inputs.items()
        }
    scored = _earlier_rows(args.out, len(clean), undefended)
    rows = []
    for path in args.candidates:
        digest = sha256_file(path)
        row = scored.get((str(path), digest)) or {**score(path, inputs, judge, labels), "sha256": digest}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    eligible = [r for r in rows if r["clean"] >= CLEAN_FLOOR]
    if not eligible:
        raise SystemExit(f"no candidate keeps {CLEAN_FLOOR:.0%} clean agreement: nothing to choose")
    best = max(eligible, key=lambda r: (r["score"], r["clean_psnr"]))
    report = {
        "rule": f"clean agreement >= {CLEAN_FLOOR}; then highest mean agreement over clean and attacked "
        "inputs, static and dynamic; ties: clean PSNR",
        "judge": JUDGE,
        "source": SOURCE,
        "crops": len(clean),
        "undefended": undefended,
        "candidates": rows,
        "chosen": best["candidate"],
    }
    write_json_atomic(args.out, report)
    print(f"chosen: {best['candidate']} (score {best['score']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
