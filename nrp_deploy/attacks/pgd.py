"""PGD against a classifier placed behind the purifier, with three ways through the purifier's gradient.

The attacked pipeline is ``classifier(clamp(purifier(x'), 0, 1))`` as in the published ``bypass_nrp.py``,
where ``x' = x`` for a static defence and ``x' = dynamic_input(x)`` (noise, projection, clamp) for the
dynamic one. Gradient modes:

- ``full``: back-propagation through the purifier, as the published script does;
- ``bpda``: Backward Pass Differentiable Approximation (Athalye et al., 2018) with the identity, i.e. the
  straight-through estimator: the forward pass runs the purifier, the backward pass treats
  ``clamp(purifier(.))`` as the identity, so the step follows the classifier's input gradient taken at the
  purified image;
- ``eot``: Expectation over Transformation against the dynamic defence: the gradient is the mean of the
  full gradients through N independent draws of the defence's noise (``nrp_deploy.models.eager``'s
  ``dynamic_input``), which is what an attacker who knows the defence is randomised does.

Defaults as published: targeted (a random target different from the clean prediction), eps 16/255,
step 2/255, 10 iterations, signed-gradient descent on the cross-entropy, projection and clamp each step,
starting from the clean image. The labels are the classifier's own clean predictions (no ground truth
needed). Gradients are taken with ``torch.autograd.grad`` with respect to the images only, so no ``.grad``
is left on the classifier or the purifier.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nrp_deploy.attacks.ssp import check_budget, check_images, project
from nrp_deploy.errors import InputError
from nrp_deploy.kernels.philox import PUBLISHED_EPS as DYNAMIC_EPS
from nrp_deploy.kernels.philox import PUBLISHED_SIGMA as DYNAMIC_SIGMA
from nrp_deploy.models.eager import dynamic_input

GRADIENT_MODES = ("full", "bpda", "eot")
PGD_EPS = 16 / 255
PGD_STEP = 2 / 255
PGD_ITERATIONS = 10
EOT_SAMPLES = 8


@dataclass
class PGDResult:
    """The adversarial batch and the labels it was aimed at (targets) or pushed away from (untargeted)."""

    adversarial: torch.Tensor
    labels: torch.Tensor
    targeted: bool


def check_pgd_options(mode: str, eps: float, step: float, iterations: int, eot_samples: int) -> None:
    """Raise ``InputError`` for a gradient mode or budget PGD cannot run with."""
    _check_mode(mode, eot_samples)
    check_budget(eps, step, iterations)


def _check_mode(mode: str, eot_samples: int) -> None:
    if mode not in GRADIENT_MODES:
        raise InputError(f"unknown gradient mode {mode!r}; choose one of {', '.join(GRADIENT_MODES)}")
    if mode == "eot" and eot_samples < 1:
        raise InputError(f"EOT needs at least one noise sample, got {eot_samples}")


def random_targets(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random class per image, never equal to that image's label."""
    draw = torch.randint(0, num_classes - 1, labels.shape, generator=generator, device=labels.device)
    return draw + (draw >= labels).long()  # skip the label: uniform over the other num_classes - 1 classes


def attack_gradient(
    images: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.nn.Module,
    purifier: torch.nn.Module,
    mode: str = "full",
    eot_samples: int = EOT_SAMPLES,
    sigma: float = DYNAMIC_SIGMA,
    dynamic_eps: float = DYNAMIC_EPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gradient of the summed cross-entropy of the defended pipeline w.r.t. ``images``, per ``mode``.

    Summed (not averaged) over the batch, so each image's gradient is independent of the batch size.
    ``eot`` draws its ``eot_samples`` noise tensors from ``generator`` (on the images' device).
    """
    _check_mode(mode, eot_samples)
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if mode == "full":
            return _grad(classifier(purifier(x).clamp(0.0, 1.0)), labels, x)
        if mode == "bpda":
            with torch.no_grad():
                purified = purifier(x).clamp(0.0, 1.0)
            straight_through = x + (purified - x).detach()  # value: purified; d/dx: identity
            return _grad(classifier(straight_through), labels, x)
        total = torch.zeros_like(x)
        for _ in range(eot_samples):
            noisy = dynamic_input(x, sigma=sigma, eps=dynamic_eps, generator=generator)
            total += _grad(classifier(purifier(noisy).clamp(0.0, 1.0)), labels, x)
        return total / eot_samples


def _grad(logits: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x)
    return grad


def pgd_attack(
    images: torch.Tensor,
    classifier: torch.nn.Module,
    purifier: torch.nn.Module,
    mode: str = "full",
    targeted: bool = True,
    labels: torch.Tensor | None = None,
    eps: float = PGD_EPS,
    step: float = PGD_STEP,
    iterations: int = PGD_ITERATIONS,
    eot_samples: int = EOT_SAMPLES,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PGDResult:
    """Targeted or untargeted L-inf PGD on ``classifier(clamp(purifier(x)))`` with ``mode`` gradients.

    ``labels`` default to random targets != the clean prediction (targeted) or to the clean prediction
    (untargeted). ``generator`` draws the targets and the EOT noise, so a seeded one makes a run replayable.
    """
    check_pgd_options(mode, eps, step, iterations, eot_samples)
    check_images(images)
    clean = images.detach().clone()
    if labels is None:
        with torch.no_grad():
            logits = classifier(clean)
        predicted = logits.argmax(1)
        labels = random_targets(predicted, logits.shape[1], generator) if targeted else predicted
    elif labels.shape != (clean.shape[0],):
        raise InputError(f"labels must have shape ({clean.shape[0]},), got {tuple(labels.shape)}")
    direction = -1.0 if targeted else 1.0  # towards the target / away from the clean label
    adversarial = clean.clone()
    bar = tqdm(
        range(iterations), desc=f"PGD-{mode}", unit="it", disable=not progress, file=sys.stderr, leave=False
    )
    for _ in bar:
        grad = attack_gradient(
            adversarial, labels, classifier, purifier, mode, eot_samples=eot_samples, generator=generator
        )
        adversarial = project(adversarial + direction * step * grad.sign(), clean, eps)
    return PGDResult(adversarial=adversarial, labels=labels, targeted=targeted)
