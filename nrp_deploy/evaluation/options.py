"""``EvalOptions``: everything one robustness evaluation is asked to do, as one typed, checked record.

Built and checked before any network is loaded, so a bad request fails at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nrp_deploy.attacks.pgd import DYNAMIC_EPS, DYNAMIC_SIGMA, EOT_SAMPLES, PGD_EPS
from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.threats import CATALOGUE, resolve_attacks
from nrp_deploy.runtime.dynamic import check_noise_level

PUBLISHED_EPS = PGD_EPS  # SSP's budget is the same 16/255

# A classifier: a spec string or path, a ClassifierSpec, a torch module or a callable (images -> logits).
ClassifierLike = Any


@dataclass(frozen=True)
class EvalOptions:
    """What ``evaluate`` runs.

    Defence: ``model`` is what the defence runs (registry name, checkpoint, or an ONNX / TensorRT artifact
    through ``backend`` / ``precision`` / ``device``); ``attack_model`` is the torch checkpoint the gray-box
    attacks differentiate, the attacker's local copy (default: ``model``). ``baselines`` adds training-free
    defences (``blur``, ``jpeg``) to the comparison. ``noise_sigma`` / ``noise_eps`` are the dynamic defence's
    noise level (default: the published one): the ``dynamic`` and ``dynamic-fresh`` rows run it, and the EOT
    attacks (``pgd-eot``, ``bpda-eot``) average over it, so a white-box attacker faces the deployed noise.

    Networks: ``classifier`` is the judged network (the target) and ``sources`` the attacker's own
    networks for the black-box transfer attacks (an ensemble when several), each a classifier spec
    (``nrp_deploy.attacks.classifiers``) or any torch module / callable. ``ssp_features`` names the network
    whose features SSP attacks (``feature_layer`` its layer).

    Attacks: ``attacks`` by name, plus every attack of ``threat_models`` (``black-box``, ``gray-box``,
    ``white-box``) or of ``protocol`` (``paper``: all three); nothing named runs the former default set.
    ``eps`` is every attack's L-inf budget (steps scale with it); ``iterations`` overrides the published
    counts (SSP 100, PGD and the transfer attacks 10). ``eot_samples`` noise draws per EOT gradient;
    ``targeted`` for the PGD attacks through a defence (as published; the transfer attacks and
    ``pgd-target`` are untargeted); ``random_start`` / ``restarts`` for every PGD.

    Run: ``device`` for the attacks and the networks, ``batch_size`` images of one size per batch,
    ``seed`` for every random draw except the fresh-noise defence, ``grid_images`` examples per picture.
    """

    model: str | os.PathLike[str] = "default"
    attacks: tuple[str, ...] = ()
    threat_models: tuple[str, ...] = ()
    protocol: str | None = None
    classifier: ClassifierLike = "efficientnet_lite0"
    sources: tuple[ClassifierLike, ...] = ()
    attack_model: str | os.PathLike[str] | None = None
    backend: str = "auto"
    precision: str | None = None
    ssp_features: str = "efficientnet_lite0"
    feature_layer: str | None = None
    baselines: tuple[str, ...] = ()
    eps: float = PUBLISHED_EPS
    iterations: int | None = None
    eot_samples: int = EOT_SAMPLES
    targeted: bool = True
    random_start: bool = False
    restarts: int = 1
    device: str = "cpu"
    batch_size: int = 4
    seed: int = 0
    grid_images: int = 4
    noise_sigma: float = DYNAMIC_SIGMA
    noise_eps: float = DYNAMIC_EPS
    resolved: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("attacks", "threat_models", "sources", "baselines"):
            value = getattr(self, name)
            if isinstance(value, str):  # one comma-separated string, as the command line has it
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            object.__setattr__(self, name, tuple(value))
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.eot_samples >= 1, f"eot_samples must be >= 1, got {self.eot_samples}")
        _check(
            self.iterations is None or self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}"
        )
        _check(self.grid_images >= 0, f"grid_images must be >= 0, got {self.grid_images}")
        _check(
            isinstance(self.restarts, int) and self.restarts >= 1,
            f"restarts must be >= 1, got {self.restarts}",
        )
        _check(0 < self.eps <= 1, f"eps must be in (0, 1], got {self.eps}")
        for name in ("noise_sigma", "noise_eps"):
            check_noise_level(name, getattr(self, name))
        object.__setattr__(self, "resolved", resolve_attacks(self.attacks, self.threat_models, self.protocol))
        needs_sources = [a for a in self.resolved if "sources" in CATALOGUE[a].needs]
        if needs_sources and not self.sources:
            raise InputError(
                f"the black-box transfer attacks ({', '.join(needs_sources)}) are crafted on the attacker's own "
                "networks: name them with sources / --source (e.g. --source efficientnet_lite0,efficientnet_lite1)"
            )

    def needs(self, what: str) -> bool:
        """Whether any chosen attack needs ``what`` (``sources``, ``features``, ``attack-model``, ...)."""
        return any(what in CATALOGUE[a].needs for a in self.resolved)

    def scaled_step(self, published_step: float, published_eps: float = PUBLISHED_EPS) -> float:
        """A published step size, scaled with the budget (16/255 with step 2/255 -> eps with step eps/8)."""
        return published_step * self.eps / published_eps


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def label(value: ClassifierLike) -> str:
    """A classifier's name for the report."""
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    source = getattr(value, "source", value)  # a ClassifierSpec
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, Callable):  # type: ignore[arg-type]
        return getattr(source, "__name__", None) or type(source).__name__
    return type(source).__name__
