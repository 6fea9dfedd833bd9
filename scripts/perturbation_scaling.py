"""How much of a PGD perturbation must go before the attacked classifier agrees with itself again.

Crafts PGD on a classifier (as ``nrp eval``'s ``pgd-transfer`` attacks do: eps 16/255, step 2/255, saved as
uint8), then classifies ``x + a * (x_adv - x)`` for shrinking scales ``a``. A purifier that removed all but a
share ``a`` of the perturbation, and changed nothing else, would score what row ``a`` scores: a bound on
what denoising alone can recover, independent of any purifier.

    python scripts/perturbation_scaling.py corpus/heldout/crops224 --classifier efficientnet_lite2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from nrp_deploy.attacks.classifiers import CLASSIFIERS, load_classifier
from nrp_deploy.attacks.files import images_to_tensor, tensor_to_images
from nrp_deploy.attacks.pgd import PGD_EPS, PGD_STEP, pgd_attack
from nrp_deploy.images import collect_images, read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="folder of images of one size (e.g. 224x224 crops)")
    parser.add_argument("--classifier", default="efficientnet_lite2", choices=CLASSIFIERS)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--scales", default="1,0.75,0.5,0.25,0.1,0.05")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    files = [task.source for task in collect_images([args.images])]
    x = images_to_tensor(np.stack([read_image(f) for f in files]))
    classifier = load_classifier(args.classifier)
    with torch.no_grad():
        clean = classifier(x).argmax(1)
    generator = torch.Generator().manual_seed(args.seed)
    scales = [float(s) for s in args.scales.split(",")]
    budget = f"eps {PGD_EPS * 255:g}/255, step {PGD_STEP * 255:g}/255"
    print(f"{len(files)} images, {args.classifier}, PGD {budget}, {args.iterations} iterations")
    print("| attack | " + " | ".join(f"{s:g} left" for s in scales) + " |")
    print("| --- |" + " --- |" * len(scales))
    for targeted in (False, True):
        adversarial = pgd_attack(
            x,
            classifier,
            torch.nn.Identity(),
            targeted=targeted,
            eps=PGD_EPS,
            step=PGD_STEP,
            iterations=args.iterations,
            generator=generator,
        ).adversarial
        perturbation = images_to_tensor(tensor_to_images(adversarial)) - x  # saved as uint8
        cells = []
        for scale in scales:
            with torch.no_grad():
                agree = (classifier((x + scale * perturbation).clamp(0, 1)).argmax(1) == clean).sum().item()
            cells.append(f"{agree}/{len(files)}")
        print(f"| {'targeted' if targeted else 'untargeted'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
