"""NRP as an Adversarial Robustness Toolbox (ART) preprocessing defence.

``NRPPreprocessor`` is an ART ``PreprocessorPyTorch``: put it in front of a ``PyTorchClassifier``
(``preprocessing_defences=[NRPPreprocessor("default")]``) and ART's attacks run against the defended
classifier::

    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier
    from nrp_deploy.interop.art import NRPPreprocessor

    defence = NRPPreprocessor("model-int8.onnx", estimator="checkpoint", attack_model="model.safetensors")
    classifier = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 224, 224),
                                   nb_classes=1000, clip_values=(0, 1), preprocessing_defences=[defence])
    adversarial = ProjectedGradientDescent(classifier, eps=16 / 255, eps_step=2 / 255, max_iter=10).generate(x)

``forward`` runs the *deployed* purifier (the runtime's ``load_purifier``: any backend and precision, or a
``Purifier`` / torch module you pass), optionally after the dynamic defence's noise (fresh per call).
``estimate_forward`` is its differentiable stand-in for ART's backward pass: ``identity`` (BPDA, the
straight-through estimator; the default, and the only one an engine without a checkpoint allows) or
``checkpoint`` (the purifier's torch checkpoint, ``attack_model``). When ART hands ``forward`` a tensor that
needs a gradient, the output carries the deployed values with the stand-in's gradient. Images are float32
NCHW in [0, 1] (``channels_first``, ``clip_values=(0, 1)``), ART's default layout for PyTorch.

Needs the ``interop`` extra (``pip install -e ".[interop]"``: adversarial-robustness-toolbox).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from nrp_deploy.attacks.pgd import dynamic_input
from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.interop.purified import noise_settings, purifier_parts
from nrp_deploy.runtime import DynamicDefense

try:
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise BackendUnavailableError(
        'nrp_deploy.interop.art needs the Adversarial Robustness Toolbox: pip install -e ".[interop]" '
        "(adversarial-robustness-toolbox)"
    ) from exc

ESTIMATORS = ("identity", "checkpoint")


class NRPPreprocessor(PreprocessorPyTorch):
    """The deployed NRP purifier as an ART preprocessing defence (see the module docstring).

    ``purifier``: a registry name or path (run by ``load_purifier`` with ``backend`` / ``precision`` /
    ``device``), a runtime ``Purifier``, any ``purify(float32 NCHW array) -> array`` or a torch module.
    ``estimator``: ``identity`` or ``checkpoint`` (``attack_model``, default the purifier's own checkpoint).
    ``dynamic``: True or a ``DynamicDefense`` for noise before the purifier, drawn from ``generator``.
    ``device_type``: ART's ``cpu`` / ``gpu`` for the stand-in's tensors.
    """

    params: ClassVar[list[str]] = ["estimator", "dynamic"]

    def __init__(
        self,
        purifier: Any = "default",
        estimator: str = "identity",
        *,
        attack_model: Any = None,
        dynamic: bool | DynamicDefense | None = False,
        backend: str = "auto",
        precision: str | None = None,
        device: str | None = None,
        generator: torch.Generator | None = None,
        device_type: str = "gpu",
        apply_fit: bool = False,
        apply_predict: bool = True,
    ) -> None:
        super().__init__(
            device_type=device_type, is_fitted=True, apply_fit=apply_fit, apply_predict=apply_predict
        )
        if estimator not in ESTIMATORS:
            raise InputError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        self.estimator = estimator
        self.dynamic = noise_settings(dynamic)
        self.generator = generator
        deployed, stand_in = purifier_parts(
            purifier,
            attack_model,
            need_torch=estimator == "checkpoint",
            device=device,
            backend=backend,
            precision=precision,
        )
        self.deployed = deployed.to(self.device)
        self.stand_in = None if stand_in is None else stand_in.to(self.device)

    def forward(self, x: torch.Tensor, y: Any = None) -> tuple[torch.Tensor, Any]:
        """The deployed purifier's output (float32 NCHW in [0, 1]); with the stand-in's gradient when
        ``x`` needs one."""
        noisy = self._noisy(x)
        with torch.no_grad():
            deployed = self.deployed(noisy.detach()).clamp(0.0, 1.0)
        if not x.requires_grad or not torch.is_grad_enabled():
            return deployed, y
        approx = x if self.stand_in is None else self._stand_in(noisy)
        return approx + (deployed - approx).detach(), y

    def estimate_forward(self, x: torch.Tensor, y: Any = None) -> torch.Tensor:
        """The differentiable stand-in: the identity (BPDA: noise and purifier both passed straight
        through) or the torch checkpoint (on a fresh noise draw when the defence is dynamic)."""
        if self.stand_in is None:
            return x
        return self._stand_in(self._noisy(x))

    def _stand_in(self, x: torch.Tensor) -> torch.Tensor:
        if self.stand_in is None:
            return x
        return self.stand_in(x).clamp(0.0, 1.0)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic is None:
            return x
        return dynamic_input(x, self.dynamic.sigma, self.dynamic.eps, generator=self.generator)

    def _check_params(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}")
