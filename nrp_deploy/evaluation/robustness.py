"""Robustness evaluation: does the deployed purifier still defend the classifier, attack by attack?

No labels are needed: the classifier's prediction on the clean image is the reference. For every attack
the adversarial images are crafted in torch, written to uint8 as a saved adversary would be, and then
classified behind each defence: undefended, after the purifier, after the dynamic defence (noise, then the
purifier), and after any training-free baselines asked for (blur, JPEG). Attacks:

- ``none``: the clean image (what each defence costs on clean photos);
- ``ssp``: the self-supervised perturbation on a feature network's features (``ssp_features``);
- ``pgd-transfer`` / ``pgd-transfer-targeted``: PGD on the classifier alone, untargeted / targeted, i.e.
  an attacker who does not know a defence is there (the adversary transfers through it);
- ``pgd-full`` / ``pgd-bpda`` / ``pgd-eot``: white-box PGD on the classifier behind the purifier, with full,
  straight-through or expectation-over-noise gradients (targeted unless ``targeted=False``).

The report gives each defence's agreement with the clean prediction, the hit rate of a targeted PGD, and the
fidelity of each defence's output against the clean image: PSNR, SSIM, mean CIEDE2000 and the mean shift
per RGB channel (the last two catch colour casts, which PSNR barely registers).

The defended predictions go through a ``purify(images, dynamic) -> images`` callable on float32 NCHW
[0, 1] numpy arrays, by default the runtime's ``load_purifier`` (any backend, any precision), so every
deployed artifact is evaluated by one code path; the attacker differentiates the torch checkpoint it came
from (``attack_model``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nrp_deploy.assets import imagenet_class_names
from nrp_deploy.attacks.classifiers import load_classifier
from nrp_deploy.attacks.features import build_feature_extractor
from nrp_deploy.attacks.files import images_to_tensor, tensor_to_images
from nrp_deploy.attacks.pgd import EOT_SAMPLES, PGD_EPS, PGD_ITERATIONS, pgd_attack
from nrp_deploy.attacks.ssp import SSP_EPS, SSP_ITERATIONS, ssp_attack
from nrp_deploy.errors import InputError, NRPDeployError
from nrp_deploy.evaluation.baselines import baseline_defences
from nrp_deploy.evaluation.metrics import channel_shift, mean_ciede2000, psnr, ssim
from nrp_deploy.images import collect_images, read_image
from nrp_deploy.models import load_model

ATTACKS = ("none", "ssp", "pgd-transfer", "pgd-transfer-targeted", "pgd-full", "pgd-bpda", "pgd-eot")
DEFENCES = ("undefended", "purified", "dynamic")
PurifyFn = Callable[[np.ndarray, bool], np.ndarray]
_EPS = {attack: PGD_EPS for attack in ATTACKS} | {"none": 0.0, "ssp": SSP_EPS}
# PGD on the classifier alone: the attacker's pipeline has no purifier in it.
_TRANSFER = {"pgd-transfer": False, "pgd-transfer-targeted": True}


@dataclass
class Example:
    """One image of one attack, kept for the picture grid."""

    name: str
    clean: np.ndarray
    adversarial: np.ndarray
    purified: np.ndarray
    predictions: dict[str, int]


@dataclass
class AttackResult:
    """Per-image records of one attack and their summary."""

    name: str
    eps: float
    defences: tuple[str, ...] = DEFENCES
    records: list[dict[str, Any]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    seconds: float = 0.0

    def agreement(self, defence: str) -> float:
        """Fraction of images whose prediction under ``defence`` equals the clean prediction."""
        return float(np.mean([r[defence] == r["clean"] for r in self.records]))

    def target_hits(self, defence: str) -> float | None:
        """Fraction of images classified as their PGD target under ``defence`` (None if untargeted)."""
        if not self.records or self.records[0]["target"] is None:
            return None
        return float(np.mean([r[defence] == r["target"] for r in self.records]))

    def mean(self, key: str) -> float | None:
        """Mean of a per-image metric over the images where it is finite (None if there are none)."""
        values = [r[key] for r in self.records if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    def mean_shift(self, defence: str) -> list[float] | None:
        """Mean per-channel shift (R, G, B; 0..255) of ``defence``'s output against the clean images."""
        shifts = [r[f"rgb_shift_{defence}"] for r in self.records if f"rgb_shift_{defence}" in r]
        return [float(v) for v in np.mean(shifts, axis=0)] if shifts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.name,
            "eps": self.eps,
            "images": len(self.records),
            "agreement": {d: self.agreement(d) for d in self.defences},
            "target_hits": None
            if self.target_hits("undefended") is None
            else {d: self.target_hits(d) for d in self.defences},
            "psnr_purified_db": self.mean("psnr_purified"),
            "ssim_purified": self.mean("ssim_purified"),
            "psnr_adversarial_db": self.mean("psnr_adversarial"),
            "fidelity": {
                d: {
                    "psnr_db": self.mean(f"psnr_{d}"),
                    "ssim": self.mean(f"ssim_{d}"),
                    "ciede2000": self.mean(f"delta_e_{d}"),
                    "rgb_shift": self.mean_shift(d),
                }
                for d in self.defences
                if d != "undefended"
            },
            "seconds": round(self.seconds, 2),
            "per_image": self.records,
        }


@dataclass
class EvalReport:
    settings: dict[str, Any]
    results: list[AttackResult]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "attacks": [r.to_dict() for r in self.results],
            "failed": [{"file": f, "error": e} for f, e in self.failed],
            "class_names": self.class_names(),
        }

    def class_names(self) -> dict[str, str]:
        """The ImageNet name of every class index that the records mention (JSON keys are strings)."""
        names = imagenet_class_names()
        seen = {
            r[key]
            for result in self.results
            for r in result.records
            for key in ("clean", *result.defences, "target")
            if r[key] is not None
        }
        return {str(i): names[i] for i in sorted(seen) if 0 <= i < len(names)}


@dataclass
class _Attackers:
    """What the attacks need, loaded once: the classifier, the torch purifier, the SSP features."""

    classifier: torch.nn.Module
    purifier: torch.nn.Module | None
    features: torch.nn.Module | None
    iterations: int | None
    eot_samples: int
    targeted: bool
    seed: int
    generators: dict[str, torch.Generator] = field(default_factory=dict)

    def run(self, attack: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Adversarial batch and PGD targets (None unless a targeted PGD)."""
        if attack == "none":
            return x, None
        if attack not in self.generators:
            self.generators[attack] = torch.Generator(device=x.device).manual_seed(self.seed)
        generator = self.generators[attack]
        if attack == "ssp":
            iterations = SSP_ITERATIONS if self.iterations is None else self.iterations
            return ssp_attack(x, self.features, iterations=iterations, generator=generator), None
        transfer = attack in _TRANSFER
        targeted = _TRANSFER[attack] if transfer else self.targeted
        result = pgd_attack(
            x,
            self.classifier,
            torch.nn.Identity() if transfer else self.purifier,
            mode="full" if transfer else attack.removeprefix("pgd-"),
            targeted=targeted,
            iterations=PGD_ITERATIONS if self.iterations is None else self.iterations,
            eot_samples=self.eot_samples,
            generator=generator,
        )
        return result.adversarial, result.labels if targeted else None


def runtime_purify_fn(
    model: str | os.PathLike[str],
    backend: str = "auto",
    precision: str | None = None,
    device: str | None = None,
    seed: int = 0,
) -> tuple[PurifyFn, str]:
    """A ``purify(images, dynamic)`` over the runtime, and its one-line description.

    The dynamic defence uses the published sigma and eps with a fixed seed, and the images of successive
    calls take successive noise indices, so a whole evaluation is replayable.
    """
    from nrp_deploy.runtime import DynamicDefense, load_purifier

    purifier = load_purifier(model, backend=backend, precision=precision, device=device)
    defence = DynamicDefense(seed=seed)
    offset = 0

    def purify(images: np.ndarray, dynamic: bool) -> np.ndarray:
        nonlocal offset
        if not dynamic:
            return purifier(images)
        out = purifier(images, dynamic=defence, start_index=offset)
        offset += len(images)
        return out

    return purify, purifier.describe()


def evaluate(
    inputs: Iterable[str | os.PathLike[str]],
    model: str | os.PathLike[str] = "default",
    attacks: Sequence[str] = ATTACKS,
    *,
    attack_model: str | os.PathLike[str] | None = None,
    purify: PurifyFn | None = None,
    backend: str = "auto",
    precision: str | None = None,
    classifier: str = "efficientnet_lite0",
    ssp_features: str = "efficientnet_lite0",
    feature_layer: str | None = None,
    baselines: Sequence[str] = (),
    iterations: int | None = None,
    eot_samples: int = EOT_SAMPLES,
    targeted: bool = True,
    device: str = "cpu",
    batch_size: int = 4,
    seed: int = 0,
    grid_images: int = 4,
    progress: bool = True,
) -> EvalReport:
    """Attack every image under ``inputs`` with each of ``attacks`` and classify it three ways.

    ``model`` is what the defence runs (registry name, checkpoint, or an ONNX / TensorRT artifact through
    ``backend`` / ``precision``); ``attack_model`` is the torch checkpoint the attacks differentiate
    (default: ``model``). ``purify`` replaces the runtime as the defence (then ``backend`` and ``precision``
    are unused). ``iterations`` overrides the published counts (SSP 100, PGD 10). ``ssp_features`` names
    the network whose features SSP attacks (``feature_layer`` its layer); ``baselines`` adds training-free
    defences (``blur``, ``jpeg``) to the comparison.
    """
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise InputError(
            f"unknown attack(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ATTACKS)}"
        )
    if batch_size < 1 or eot_samples < 1 or (iterations is not None and iterations < 0) or grid_images < 0:
        raise InputError("batch_size and eot_samples must be >= 1, iterations and grid_images >= 0")
    extra_defences = baseline_defences(tuple(baselines))
    tasks = collect_images(inputs)
    if not tasks:
        raise InputError("no images found in the inputs")
    description = "custom purify function"
    if purify is None:
        purify, description = runtime_purify_fn(model, backend, precision, device, seed)
    attackers = _Attackers(
        classifier=load_classifier(classifier, device),
        purifier=_attack_purifier(attack_model or model, device)
        if any(a.startswith("pgd-") and a not in _TRANSFER for a in attacks)
        else None,
        features=build_feature_extractor(ssp_features, layer=feature_layer).to(device)
        if "ssp" in attacks
        else None,
        iterations=iterations,
        eot_samples=eot_samples,
        targeted=targeted,
        seed=seed,
    )
    defences = (*DEFENCES, *extra_defences)
    results = {a: AttackResult(a, _EPS[a], defences) for a in attacks}
    failed: list[tuple[str, str]] = []
    batches = _batches(tasks, batch_size, failed)
    if not batches:
        raise InputError("no readable images: " + "; ".join(f"{path}: {error}" for path, error in failed))
    bar = tqdm(total=len(batches) * len(attacks), unit="attack-batch", disable=not progress, file=sys.stderr)
    for names, images in batches:
        x = images_to_tensor(images, device)
        with torch.no_grad():
            clean_pred = attackers.classifier(x).argmax(1).tolist()
        for attack in attacks:
            bar.set_description(attack)
            start = time.perf_counter()
            adv, targets = attackers.run(attack, x)
            adv_images = tensor_to_images(adv)
            _score(
                results[attack],
                names,
                images,
                adv_images,
                clean_pred,
                targets,
                attackers.classifier,
                purify,
                extra_defences,
                device,
                grid_images,
            )
            results[attack].seconds += time.perf_counter() - start
            bar.update(1)
    bar.close()
    settings = {
        "model": os.fspath(model),
        "defence": description,
        "attack_model": os.fspath(attack_model or model),
        "classifier": classifier,
        "ssp_features": f"{attackers.features.name}/{attackers.features.layer}"
        if attackers.features is not None
        else None,
        "baselines": list(extra_defences),
        "iterations": iterations,
        "eot_samples": eot_samples,
        "pgd": "targeted" if targeted else "untargeted",
        "seed": seed,
        "device": device,
        "images": sum(len(n) for n, _ in batches),
    }
    return EvalReport(settings, [results[a] for a in attacks], failed)


def _attack_purifier(model: str | os.PathLike[str], device: str) -> torch.nn.Module:
    try:
        return load_model(model, device=device).module.eval()
    except NRPDeployError as exc:
        raise NRPDeployError(
            f"the PGD attacks differentiate a torch checkpoint and cannot use {os.fspath(model)}: {exc} "
            "(pass the checkpoint it was made from as attack_model / --attack-model)"
        ) from exc


def _batches(tasks, batch_size: int, failed: list[tuple[str, str]]) -> list[tuple[list[str], np.ndarray]]:
    """Read every image, group equal sizes, cut into batches; unreadable files go to ``failed``."""
    groups: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for task in tasks:
        try:
            image = read_image(task.source)
        except NRPDeployError as exc:
            failed.append((str(task.source), str(exc).removeprefix(f"{task.source}: ")))
            continue
        groups.setdefault(image.shape, []).append((str(task.relative), image))
    batches = []
    for items in groups.values():
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            batches.append(([name for name, _ in chunk], np.stack([image for _, image in chunk])))
    return batches


def _to_float(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Purifier output (float NCHW) as the uint8 image it would be saved as."""
    return (
        np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255)
        .astype(np.uint8)
        .transpose(0, 2, 3, 1)
    )


def _score(
    result: AttackResult,
    names: list[str],
    clean: np.ndarray,
    adversarial: np.ndarray,
    clean_pred: list[int],
    targets: torch.Tensor | None,
    classifier: torch.nn.Module,
    purify: PurifyFn,
    extra_defences: dict[str, Callable[[np.ndarray], np.ndarray]],
    device: str,
    grid_images: int,
) -> None:
    adv_float = _to_float(adversarial)
    outputs = {
        "undefended": adversarial,
        "purified": _to_uint8(purify(adv_float, False)),
        "dynamic": _to_uint8(purify(adv_float, True)),
        **{name: defend(adversarial) for name, defend in extra_defences.items()},
    }
    predictions = {d: _classify(classifier, images, device) for d, images in outputs.items()}
    has_ssim = min(clean.shape[1:3]) >= 11
    for k, name in enumerate(names):
        record = {
            "file": name,
            "clean": clean_pred[k],
            **{d: predictions[d][k] for d in outputs},
            "target": None if targets is None else int(targets[k]),
            "psnr_adversarial": _finite(psnr(adversarial[k], clean[k])),
        }
        for d, images in outputs.items():
            if d == "undefended":
                continue
            record[f"psnr_{d}"] = _finite(psnr(images[k], clean[k]))
            record[f"ssim_{d}"] = ssim(images[k], clean[k]) if has_ssim else None
            record[f"delta_e_{d}"] = mean_ciede2000(images[k], clean[k])
            record[f"rgb_shift_{d}"] = channel_shift(images[k], clean[k])
        result.records.append(record)
        if len(result.examples) < grid_images:
            preds = {"clean": clean_pred[k], **{d: predictions[d][k] for d in DEFENCES}}
            result.examples.append(Example(name, clean[k], adversarial[k], outputs["purified"][k], preds))


def _classify(classifier: torch.nn.Module, images: np.ndarray, device: str) -> list[int]:
    with torch.no_grad():
        return classifier(images_to_tensor(images, device)).argmax(1).tolist()


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical images (PSNR inf) are recorded as None."""
    return None if math.isinf(value) else value
