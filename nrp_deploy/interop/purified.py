"""``PurifiedClassifier``: a classifier behind the deployed purifier as one torch module, for any attack
library (torchattacks, ART's ``PyTorchClassifier``, foolbox, your own loop).

The forward pass is what a deployment computes: the purifier (the runtime's ``Purifier`` on any backend and
precision, a checkpoint, or a torch module), optionally after the dynamic defence's noise, then the
classifier. The backward pass is chosen by ``gradient``:

- ``bpda``: straight-through (BPDA with the identity): the gradient is the classifier's input gradient
  taken at the purified image. Works for every purifier, an INT8 engine included.
- ``full``: the gradient of the purifier's torch checkpoint (``attack_model``, or the purifier itself when
  it is a torch module), while the values stay the deployed ones: ``y_torch + (y_deployed - y_torch)``
  with the difference detached.
- ``eot``: ``full`` averaged over ``eot_samples`` draws of the dynamic defence's noise (Expectation over
  Transformation): the module returns the mean of the logits over the draws. (Attacks that average
  gradients themselves, such as torchattacks' ``EOTPGD``, can use ``full`` with ``dynamic`` instead.)

With ``dynamic`` (True for the published sigma 0.05 and eps 16/255, or a ``DynamicDefense`` for its sigma
and eps) every forward pass draws fresh noise, as a deployment with an unseeded defence does; a fixed seed
of the ``DynamicDefense`` is not replayed (an attacker faces fresh noise). The module is pinned to eval
mode: attack libraries switch the modes of what they attack (torchattacks calls ``.train()`` after an
attack on a module it found training), and batch-norm statistics must never move.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from nrp_deploy.attacks.classifiers import load_classifier
from nrp_deploy.attacks.deployed import DeployedPurifier
from nrp_deploy.attacks.pgd import EOT_SAMPLES, dynamic_input
from nrp_deploy.errors import InputError
from nrp_deploy.runtime import DynamicDefense

GRADIENTS = ("bpda", "full", "eot")


def noise_settings(dynamic: bool | DynamicDefense | None) -> DynamicDefense | None:
    """The noise a ``dynamic`` argument asks for: None, the published defence, or the one given."""
    if dynamic is None or dynamic is False:
        return None
    if dynamic is True:
        return DynamicDefense()
    if isinstance(dynamic, DynamicDefense):
        return dynamic
    raise InputError(f"dynamic must be a bool or a DynamicDefense, got {dynamic!r}")


def purifier_parts(
    purifier: Any,
    attack_model: Any = None,
    *,
    need_torch: bool,
    device: str | torch.device | None = None,
    backend: str = "auto",
    precision: str | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """(the deployed purifier as a forward-only module, its torch stand-in or None).

    ``purifier``: a torch module (used for both), a registry name / path (``load_purifier`` runs it), or a
    runtime ``Purifier`` or any ``purify(float32 NCHW array) -> array`` callable. ``attack_model``: a torch
    module or checkpoint for the gradient (default: the purifier's own checkpoint when it has one).
    """
    if isinstance(purifier, nn.Module):
        module = purifier.eval().requires_grad_(False)
        return module, (module if need_torch else None)
    if isinstance(purifier, str | os.PathLike):
        from nrp_deploy.runtime import load_purifier

        if attack_model is None:
            attack_model = purifier
        deployed = DeployedPurifier(
            load_purifier(purifier, backend=backend, precision=precision, device=_runtime_device(device)),
            name=os.fspath(purifier),
        )
    elif callable(purifier):
        deployed = DeployedPurifier(purifier, name=type(purifier).__name__)
    else:
        raise InputError(
            f"purifier must be a torch module, a registry name or path, or a purify(array) callable, got "
            f"{type(purifier).__name__}"
        )
    if not need_torch:
        return deployed, None
    if attack_model is None:
        raise InputError(
            "the full and eot gradients need the purifier's torch checkpoint: pass attack_model (a checkpoint "
            "path, registry name or torch module)"
        )
    if isinstance(attack_model, nn.Module):
        return deployed, attack_model.eval().requires_grad_(False)
    from nrp_deploy.models import load_model

    return deployed, load_model(attack_model, device="cpu").module.eval().requires_grad_(False)


def _runtime_device(device: str | torch.device | None) -> str | None:
    return None if device is None else str(device)


class PurifiedClassifier(nn.Module):
    """``classifier(purifier(x))`` as a torch module, [0, 1] NCHW images in, logits out; see the module
    docstring for ``gradient`` and ``dynamic``.

    ``classifier``: a torch module, callable or classifier spec (``nrp_deploy.attacks.load_classifier``).
    ``purifier``: a torch module, a registry name or path (run by the runtime with ``backend`` /
    ``precision``), a runtime ``Purifier`` or any ``purify(array) -> array``. ``generator`` draws the noise.
    """

    def __init__(
        self,
        classifier: Any,
        purifier: Any = "default",
        gradient: str = "bpda",
        *,
        dynamic: bool | DynamicDefense | None = False,
        eot_samples: int = EOT_SAMPLES,
        attack_model: Any = None,
        backend: str = "auto",
        precision: str | None = None,
        device: str | torch.device | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if gradient not in GRADIENTS:
            raise InputError(f"unknown gradient {gradient!r}; choose one of {', '.join(GRADIENTS)}")
        if eot_samples < 1:
            raise InputError(f"eot_samples must be >= 1, got {eot_samples}")
        self.gradient = gradient
        self.noise = noise_settings(dynamic if gradient != "eot" else (dynamic or True))
        self.eot_samples = eot_samples if gradient == "eot" else 1
        self.generator = generator
        self.classifier = load_classifier(classifier, device or "cpu", role="source")
        deployed, stand_in = purifier_parts(
            purifier,
            attack_model,
            need_torch=gradient != "bpda",
            device=device,
            backend=backend,
            precision=precision,
        )
        self.purifier = deployed
        self.stand_in = stand_in
        if device is not None:
            self.to(device)
        super().train(False)

    def train(self, mode: bool = True) -> PurifiedClassifier:
        """Does nothing: the module stays in eval mode whatever an attack library asks."""
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = [self.classifier(self._defended(images)) for _ in range(self.eot_samples)]
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        """The defence's output alone (one noise draw), with this module's gradient."""
        return self._defended(images)

    def _defended(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x
        if self.noise is not None:
            noisy = dynamic_input(x, self.noise.sigma, self.noise.eps, generator=self.generator)
        with torch.no_grad():
            deployed = self.purifier(noisy.detach()).clamp(0.0, 1.0)
        if self.gradient == "bpda":
            return x + (deployed - x).detach()  # value: the deployed output; d/dx: identity
        assert self.stand_in is not None
        approx = self.stand_in(noisy).clamp(0.0, 1.0)
        if self.stand_in is self.purifier:
            return approx
        return approx + (deployed - approx).detach()  # value: deployed; gradient: the checkpoint's

    def extra_repr(self) -> str:
        noise = "off" if self.noise is None else f"sigma {self.noise.sigma}, eps {self.noise.eps:.4f}"
        return f"gradient={self.gradient!r}, noise={noise}, eot_samples={self.eot_samples}"
