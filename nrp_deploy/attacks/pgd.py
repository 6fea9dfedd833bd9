"""PGD against a classifier placed behind the purifier, with four ways through the purifier's gradient.

The attacked pipeline is ``classifier(clamp(purifier(x'), 0, 1))`` as in the published ``bypass_nrp.py``,
where ``x' = x`` for a static defence and ``x' = dynamic_input(x)`` (noise, projection, clamp) for the
dynamic one. Gradient modes:

- ``full``: back-propagation through the purifier, as the published script does;
- ``bpda``: Backward Pass Differentiable Approximation (Athalye et al., 2018) with the identity, i.e. the
  straight-through estimator: the forward pass runs the purifier, the backward pass treats
  ``clamp(purifier(.))`` as the identity, so the step follows the classifier's input gradient taken at the
  purified image. The purifier is only run forward, so it may be anything that maps tensors to tensors
  (``DeployedPurifier`` runs the deployed ONNX / TensorRT artifact);
- ``eot``: Expectation over Transformation against the dynamic defence: the gradient is the mean of the
  full gradients through N independent draws of the defence's noise (``nrp_deploy.models.eager``'s
  ``dynamic_input``), which is what an attacker who knows the defence is randomised does;
- ``bpda-eot``: both at once, for a randomised defence whose purifier gives no gradient: the mean over N
  noise draws of the straight-through gradient at the purified noisy image.

The noise the EOT modes draw has the published level (sigma 0.05, eps 16/255) unless ``sigma`` and
``dynamic_eps`` say otherwise: give the level the attacked deployment runs, so that the attacker averages
over the noise it will face (the restarts' scoring draws the same noise).

Defaults as published: targeted (a random target different from the clean prediction), eps 16/255,
step 2/255, 10 iterations, signed-gradient descent on the cross-entropy, projection and clamp each step,
starting from the clean image. ``random_start`` starts from a uniform draw in the eps-ball instead (Madry
et al.; then the seed matters for an untargeted attack too, and the attack can reach eps even when
iterations x step < eps), and ``restarts`` runs the attack that many times from fresh random starts and
keeps, per image, the adversary the pipeline scores best (an untargeted one that changes the prediction,
then the highest loss; a targeted one that hits the target, then the lowest loss), as adaptive evaluations
do. The labels are the classifier's own clean predictions (no ground truth needed). Gradients are taken
with ``torch.autograd.grad`` with respect to the images only, so no ``.grad`` is left on the classifier or
the purifier.
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
from nrp_deploy.runtime.dynamic import check_noise_level

GRADIENT_MODES = ("full", "bpda", "eot", "bpda-eot")
EOT_MODES = ("eot", "bpda-eot")  # the modes that draw the dynamic defence's noise
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


def check_pgd_options(
    mode: str,
    eps: float,
    step: float,
    iterations: int,
    eot_samples: int,
    restarts: int = 1,
    sigma: float = DYNAMIC_SIGMA,
    dynamic_eps: float = DYNAMIC_EPS,
) -> None:
    """Raise ``InputError`` for a gradient mode, budget, restart count or noise level PGD cannot run with."""
    _check_mode(mode, eot_samples)
    check_budget(eps, step, iterations)
    if not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer >= 1, got {restarts!r}")
    check_noise_level("sigma", sigma)
    check_noise_level("dynamic_eps", dynamic_eps)


def _check_mode(mode: str, eot_samples: int) -> None:
    if mode not in GRADIENT_MODES:
        raise InputError(f"unknown gradient mode {mode!r}; choose one of {', '.join(GRADIENT_MODES)}")
    if mode in EOT_MODES and eot_samples < 1:
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
            if mode == "eot":
                total += _grad(classifier(purifier(noisy).clamp(0.0, 1.0)), labels, x)
                continue
            with torch.no_grad():
                purified = purifier(noisy.detach()).clamp(0.0, 1.0)
            total += _grad(classifier(x + (purified - x).detach()), labels, x)
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
    random_start: bool = False,
    restarts: int = 1,
    sigma: float = DYNAMIC_SIGMA,
    dynamic_eps: float = DYNAMIC_EPS,
) -> PGDResult:
    """Targeted or untargeted L-inf PGD on ``classifier(clamp(purifier(x)))`` with ``mode`` gradients.

    ``labels`` default to random targets != the clean prediction (targeted) or to the clean prediction
    (untargeted). ``generator`` draws the targets, the random starts and the EOT noise, so a seeded one
    makes a run replayable. ``random_start`` / ``restarts``: see the module docstring (``restarts`` > 1
    implies random starts). ``sigma`` / ``dynamic_eps``: the noise level of the EOT modes.
    """
    check_pgd_options(mode, eps, step, iterations, eot_samples, restarts, sigma, dynamic_eps)
    check_images(images)
    clean = images.detach().clone()
    if labels is None:
        with torch.no_grad():
            logits = classifier(clean)
        predicted = logits.argmax(1)
        labels = random_targets(predicted, logits.shape[1], generator) if targeted else predicted
    elif labels.shape != (clean.shape[0],):
        raise InputError(f"labels must have shape ({clean.shape[0]},), got {tuple(labels.shape)}")
    random_start = random_start or restarts > 1
    best: torch.Tensor | None = None
    best_score: torch.Tensor | None = None
    for run in range(restarts):
        adversarial = _one_run(
            clean,
            labels,
            classifier,
            purifier,
            mode,
            targeted,
            eps,
            step,
            iterations,
            eot_samples,
            sigma,
            dynamic_eps,
            generator,
            progress and run == 0,
            random_start,
        )
        if restarts == 1:
            return PGDResult(adversarial=adversarial, labels=labels, targeted=targeted)
        score = _score(
            adversarial,
            labels,
            classifier,
            purifier,
            mode,
            targeted,
            eot_samples,
            sigma,
            dynamic_eps,
            generator,
        )
        if best is None or best_score is None:
            best, best_score = adversarial, score
            continue
        better = score > best_score
        best = torch.where(better.view(-1, 1, 1, 1), adversarial, best)
        best_score = torch.where(better, score, best_score)
    assert best is not None
    return PGDResult(adversarial=best, labels=labels, targeted=targeted)


def _one_run(
    clean: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.nn.Module,
    purifier: torch.nn.Module,
    mode: str,
    targeted: bool,
    eps: float,
    step: float,
    iterations: int,
    eot_samples: int,
    sigma: float,
    dynamic_eps: float,
    generator: torch.Generator | None,
    progress: bool,
    random_start: bool,
) -> torch.Tensor:
    direction = -1.0 if targeted else 1.0  # towards the target / away from the clean label
    adversarial = clean.clone()
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        adversarial = project(clean + (2.0 * noise - 1.0) * eps, clean, eps)
    bar = tqdm(
        range(iterations), desc=f"PGD-{mode}", unit="it", disable=not progress, file=sys.stderr, leave=False
    )
    for _ in bar:
        grad = attack_gradient(
            adversarial,
            labels,
            classifier,
            purifier,
            mode,
            eot_samples=eot_samples,
            sigma=sigma,
            dynamic_eps=dynamic_eps,
            generator=generator,
        )
        adversarial = project(adversarial + direction * step * grad.sign(), clean, eps)
    return adversarial


def _score(
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.nn.Module,
    purifier: torch.nn.Module,
    mode: str,
    targeted: bool,
    eot_samples: int,
    sigma: float,
    dynamic_eps: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Per image, how good an adversary is for the attacker: success first (+1e6), then the loss (its
    negative for a targeted attack); the noise of a randomised defence (``sigma``, ``dynamic_eps``) is
    averaged over ``eot_samples``."""
    randomised = mode in EOT_MODES
    draws = eot_samples if randomised else 1
    loss = torch.zeros(len(adversarial), device=adversarial.device)
    hits = torch.zeros(len(adversarial), device=adversarial.device)
    with torch.no_grad():
        for _ in range(draws):
            x = adversarial
            if randomised:
                x = dynamic_input(x, sigma=sigma, eps=dynamic_eps, generator=generator)
            logits = classifier(purifier(x).clamp(0.0, 1.0))
            loss += F.cross_entropy(logits, labels, reduction="none")
            hits += (logits.argmax(1) == labels).float()
    loss, hits = loss / draws, hits / draws
    if targeted:
        return 1e6 * hits - loss
    return 1e6 * (1.0 - hits) + loss
