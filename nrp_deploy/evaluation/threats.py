"""The attacks the evaluation runs, by name, and the paper's three threat models that group them.

1. **black-box**: the attacker knows neither the defence nor the judged network (the *target*) and
   transfers adversaries crafted on networks of their own (the *sources*): SSP on a feature network and
   the transfer attacks MI-FGSM, DI-FGSM and TI-DIM on the source ensemble. The paper's headline claim.
2. **gray-box**: the attacker knows the target and that a defence is there, and attacks a *local copy* of
   it (the torch checkpoint, ``attack_model``): PGD on the target alone, and PGD through the local copy
   with straight-through (``pgd-bpda``) or full (``pgd-full``) gradients.
3. **white-box**: full knowledge: the deployed purifier itself (any backend and precision) with
   straight-through gradients, without (``bpda``) and with the dynamic defence (``bpda-eot``), and the
   expectation over the dynamic defence's noise of the full gradient (``pgd-eot``), which the dynamic
   defence has to withstand.

Each threat model's *worst case* is the agreement left when every one of its attacks is counted: an image
keeps its clean class only if it keeps it under all of them (per image, as AutoAttack reports robust
accuracy); the report also gives the minimum over attacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nrp_deploy.errors import InputError

THREAT_MODELS = ("black-box", "gray-box", "white-box")
PROTOCOLS = {"paper": THREAT_MODELS}


@dataclass(frozen=True)
class AttackInfo:
    """One attack: its threat model (None for the clean images), what it needs, one line about it."""

    name: str
    threat_model: str | None
    needs: frozenset[str]
    about: str

    @property
    def differentiates_target(self) -> bool:
        return "target-gradient" in self.needs


def _info(name: str, threat_model: str | None, needs: str, about: str) -> AttackInfo:
    return AttackInfo(name, threat_model, frozenset(needs.split()), about)


CATALOGUE: dict[str, AttackInfo] = {
    a.name: a
    for a in (
        _info("none", None, "", "the clean images: what each defence costs"),
        _info("ssp", "black-box", "features", "self-supervised perturbation on a feature network"),
        _info("mi-fgsm", "black-box", "sources", "momentum iterative FGSM on the sources (torchattacks)"),
        _info("di-fgsm", "black-box", "sources", "diverse-inputs FGSM on the sources (torchattacks)"),
        _info(
            "ti-dim", "black-box", "sources", "translation-invariant MI-DI-FGSM on the sources (torchattacks)"
        ),
        _info("pgd-target", "gray-box", "target-gradient", "untargeted PGD on the target alone"),
        _info("pgd-target-targeted", "gray-box", "target-gradient", "targeted PGD on the target alone"),
        _info(
            "pgd-bpda",
            "gray-box",
            "target-gradient attack-model",
            "PGD through the local copy, straight-through",
        ),
        _info(
            "pgd-full",
            "gray-box",
            "target-gradient attack-model",
            "PGD through the local copy, full gradient",
        ),
        _info(
            "bpda",
            "white-box",
            "target-gradient deployed",
            "PGD through the deployed purifier, straight-through",
        ),
        _info(
            "bpda-eot",
            "white-box",
            "target-gradient deployed",
            "PGD through the deployed dynamic defence: straight-through, averaged over noise draws",
        ),
        _info(
            "pgd-eot",
            "white-box",
            "target-gradient attack-model",
            "PGD through the dynamic defence: full gradient of the checkpoint, averaged over noise draws",
        ),
    )
}
ATTACKS = tuple(CATALOGUE)
# Former names: `pgd-transfer` was PGD on the judged classifier itself, which is no transfer.
ALIASES = {"pgd-transfer": "pgd-target", "pgd-transfer-targeted": "pgd-target-targeted"}
THREAT_MODEL_ATTACKS = {
    "black-box": ("ssp", "mi-fgsm", "di-fgsm", "ti-dim"),
    "gray-box": ("pgd-target", "pgd-bpda"),
    "white-box": ("bpda", "bpda-eot", "pgd-eot"),
}
DEFAULT_ATTACKS = ("none", "ssp", "pgd-full", "pgd-bpda", "pgd-eot")


def canonical(name: str) -> str:
    """The catalogue name of ``name`` (aliases resolved); ``InputError`` for an unknown one."""
    name = name.strip()
    name = ALIASES.get(name, name)
    if name not in CATALOGUE:
        known = ", ".join([*ATTACKS, *ALIASES])
        raise InputError(f"unknown attack {name!r}; choose from {known}")
    return name


def resolve_attacks(
    attacks: Sequence[str] = (), threat_models: Sequence[str] = (), protocol: str | None = None
) -> tuple[str, ...]:
    """The attacks a run makes, in catalogue order: those named, plus every attack of the threat models
    (those named, or the protocol's); with threat models, the clean images (``none``) come first.
    Nothing named: ``DEFAULT_ATTACKS``."""
    models = list(threat_models)
    if protocol is not None:
        if protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        models += PROTOCOLS[protocol]
    unknown = [m for m in models if m not in THREAT_MODELS]
    if unknown:
        raise InputError(
            f"unknown threat model(s) {', '.join(unknown)}; choose from {', '.join(THREAT_MODELS)}"
        )
    chosen = {canonical(a) for a in attacks}
    for model in models:
        chosen |= {"none", *THREAT_MODEL_ATTACKS[model]}
    if not chosen:
        if attacks or models:
            raise InputError("no attacks chosen")
        chosen = set(DEFAULT_ATTACKS)
    return tuple(a for a in ATTACKS if a in chosen)


def threat_model_of(attack: str) -> str | None:
    return CATALOGUE[canonical(attack)].threat_model
