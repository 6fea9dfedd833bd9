"""What the attacks of one evaluation need, loaded once, and each attack by name on one batch.

The target (the judged classifier), the source ensemble (black-box), the SSP features, the attacker's
local copy of the purifier (gray-box: the torch checkpoint) and the deployed purifier (white-box: whatever
the defence runs, through ``DeployedPurifier``) are loaded only when a chosen attack needs them. Every
attack has its own generator, seeded with the run's seed, so adding an attack to a run does not change
the adversaries of the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from nrp_deploy.attacks.classifiers import Classifier, load_classifier, resolve_sources
from nrp_deploy.attacks.deployed import DeployedPurifier
from nrp_deploy.attacks.features import build_feature_extractor
from nrp_deploy.attacks.pgd import PGD_ITERATIONS, PGD_STEP, pgd_attack
from nrp_deploy.attacks.ssp import SSP_ITERATIONS, SSP_STEP, ssp_attack
from nrp_deploy.attacks.transfer import TRANSFER_ATTACKS, TRANSFER_ITERATIONS, LossEnsemble, transfer_attack
from nrp_deploy.errors import InputError, NRPDeployError
from nrp_deploy.evaluation.options import EvalOptions
from nrp_deploy.evaluation.threats import CATALOGUE
from nrp_deploy.models import load_model

# PGD on the target alone: the attacker's pipeline has no purifier in it.
_TARGET_ONLY = {"pgd-target": False, "pgd-target-targeted": True}
_MODES = {"pgd-bpda": "bpda", "pgd-full": "full", "pgd-eot": "eot", "bpda": "bpda", "bpda-eot": "bpda-eot"}


class AttackSuite:
    """The networks the chosen attacks need, and ``run(attack, batch)``."""

    def __init__(
        self, options: EvalOptions, deployed: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> None:
        self.options = options
        device = options.device
        self.target: Classifier = load_classifier(options.classifier, device, role="target")
        if not self.target.differentiable:
            needing = [a for a in options.resolved if CATALOGUE[a].differentiates_target]
            if needing:
                raise InputError(
                    f"the target {self.target.describe()} gives no gradients, so it can be judged under "
                    f"black-box attacks only; these attacks differentiate the target: {', '.join(needing)} "
                    "(choose --threat-model black-box, or give the target's torch form)"
                )
        self.sources: LossEnsemble | None = None
        if options.needs("sources"):
            self.sources = LossEnsemble(resolve_sources(options.sources, device)).to(device)
        self.features = None
        if options.needs("features"):
            self.features = build_feature_extractor(options.ssp_features, layer=options.feature_layer).to(
                device
            )
        self.local_copy: torch.nn.Module | None = None
        if options.needs("attack-model"):
            self.local_copy = local_purifier_copy(options.attack_model or options.model, device)
        self.deployed: DeployedPurifier | None = None
        if options.needs("deployed"):
            if deployed is None:
                raise InputError(
                    "the white-box attacks through the deployed purifier need its purify function"
                )
            self.deployed = DeployedPurifier(deployed).to(device)
        self._generators: dict[str, torch.Generator] = {}

    def describe_sources(self) -> list[str]:
        return [s.describe() for s in self.sources.sources] if self.sources is not None else []

    def run(self, attack: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Adversarial batch and PGD targets (None unless a targeted PGD)."""
        if attack == "none":
            return x, None
        opts = self.options
        if attack not in self._generators:
            self._generators[attack] = torch.Generator(device=x.device).manual_seed(opts.seed)
        generator = self._generators[attack]
        if attack == "ssp":
            iterations = SSP_ITERATIONS if opts.iterations is None else opts.iterations
            step = opts.scaled_step(SSP_STEP)
            return ssp_attack(x, self.features, opts.eps, step, iterations, generator=generator), None
        if attack in TRANSFER_ATTACKS:
            assert self.sources is not None
            iterations = TRANSFER_ITERATIONS if opts.iterations is None else max(1, opts.iterations)
            adversarial = transfer_attack(
                attack, x, self.sources, eps=opts.eps, iterations=iterations, generator=generator
            )
            return adversarial, None
        if attack in _TARGET_ONLY:
            targeted, purifier, mode = _TARGET_ONLY[attack], torch.nn.Identity(), "full"
        else:
            targeted, mode = opts.targeted, _MODES[attack]
            purifier = self.deployed if attack in ("bpda", "bpda-eot") else self.local_copy
        result = pgd_attack(
            x,
            self.target,
            purifier,
            mode=mode,
            targeted=targeted,
            eps=opts.eps,
            step=opts.scaled_step(PGD_STEP),
            iterations=PGD_ITERATIONS if opts.iterations is None else opts.iterations,
            eot_samples=opts.eot_samples,
            sigma=opts.noise_sigma,
            dynamic_eps=opts.noise_eps,
            generator=generator,
            random_start=opts.random_start,
            restarts=opts.restarts,
        )
        return result.adversarial, result.labels if targeted else None


def local_purifier_copy(model: str | os.PathLike[str], device: str) -> torch.nn.Module:
    """The torch module of a purifier checkpoint (the gray-box attacker's local copy), frozen, eval mode."""
    try:
        module = load_model(model, device=device).module.eval()
    except NRPDeployError as exc:
        raise NRPDeployError(
            "the attacks through the purifier's torch checkpoint (pgd-bpda, pgd-full, pgd-eot) differentiate a "
            f"checkpoint and cannot use {os.fspath(model)}: {exc} "
            "(pass the checkpoint it was made from as attack_model / --attack-model)"
        ) from exc
    return module.requires_grad_(False)
