"""Robustness evaluation: does the deployed purifier still defend the classifier, attack by attack?

No labels are needed: the judged classifier's (the *target's*) prediction on the clean image is the
reference. For every attack the adversarial images are crafted in torch, written to uint8 as a saved
adversary would be (kept inside the budget), and then classified behind each defence: undefended, after the
purifier, after the dynamic defence (noise, then the purifier) with the noise seed fixed (``dynamic``:
replayable) and with fresh noise per call (``dynamic-fresh``: what a deployment does, and what an attacker
faces), and after any training-free baselines asked for (blur, JPEG).

The attacks and the paper's three threat models that group them are in ``nrp_deploy.evaluation.threats``:
black-box transfer from the attacker's own ``sources``, gray-box through a local copy of the defence,
white-box through the deployed defence itself. Each threat model gets a worst-case row: an image keeps its
class only if it keeps it under every attack of that threat model. The report gives each defence's
agreement with the clean prediction, how many points of it the defence recovers over no defence and which
share of the agreement the attacks took it wins back, the hit rate of a targeted PGD, and the fidelity of
each defence's output against the clean image: PSNR, SSIM, mean CIEDE2000 and the mean shift per RGB
channel (the last two catch colour casts, which PSNR barely registers).

The defended predictions go through a ``purify(images, dynamic) -> images`` callable on float32 NCHW
[0, 1] numpy arrays, where ``dynamic`` is None (the purifier alone) or the ``DynamicDefense`` to apply, by
default the runtime's ``load_purifier`` (any backend, any precision), so every deployed artifact is
evaluated by one code path; the gray-box attacker differentiates the torch checkpoint it came from
(``attack_model``) and the white-box attacker runs the deployed purifier itself.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nrp_deploy.assets import imagenet_class_names
from nrp_deploy.attacks.files import images_to_tensor, tensor_to_images
from nrp_deploy.errors import InputError, NRPDeployError
from nrp_deploy.evaluation.baselines import baseline_defences
from nrp_deploy.evaluation.metrics import channel_shift, mean_ciede2000, psnr, ssim
from nrp_deploy.evaluation.options import EvalOptions, label
from nrp_deploy.evaluation.suite import AttackSuite
from nrp_deploy.evaluation.threats import ALIASES, ATTACKS, CATALOGUE, THREAT_MODELS
from nrp_deploy.images import collect_images, read_image
from nrp_deploy.runtime import DynamicDefense

__all__ = ["ATTACKS", "DEFENCES", "AttackResult", "EvalOptions", "EvalReport", "ThreatSummary", "evaluate"]

DEFENCES = ("undefended", "purified", "dynamic", "dynamic-fresh")
PurifyFn = Callable[[np.ndarray, DynamicDefense | None], np.ndarray]


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
            "threat_model": CATALOGUE[self.name].threat_model,
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
class ThreatSummary:
    """One threat model over one run: per defence, the worst case over its attacks."""

    name: str
    attacks: list[str]
    images: int
    worst: dict[str, float]  # per image: keeps its class under every attack of the threat model
    minimum: dict[str, float]  # the lowest agreement of any one attack

    def recovered(self, defence: str) -> tuple[float, float | None]:
        """Worst-case agreement ``defence`` wins back over no defence: (points, share of the agreement the
        attacks took, None when they took none)."""
        gained = self.worst[defence] - self.worst["undefended"]
        lost = 1.0 - self.worst["undefended"]
        return 100.0 * gained, (gained / lost if lost > 0 else None)

    def to_dict(self) -> dict[str, Any]:
        recovered = {d: self.recovered(d) for d in self.worst}
        return {
            "attacks": self.attacks,
            "images": self.images,
            "worst_case": self.worst,
            "min_over_attacks": self.minimum,
            "recovered_points": {d: r[0] for d, r in recovered.items()},
            "recovered_share": {d: r[1] for d, r in recovered.items()},
        }


@dataclass
class EvalReport:
    settings: dict[str, Any]
    results: list[AttackResult]
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def defences(self) -> tuple[str, ...]:
        return self.results[0].defences if self.results else DEFENCES

    def threat_models(self) -> list[ThreatSummary]:
        """The worst case of each threat model that has attacks in this run, in the paper's order."""
        summaries = []
        for model in THREAT_MODELS:
            results = [r for r in self.results if CATALOGUE[r.name].threat_model == model]
            if not results or not results[0].records:
                continue
            files = [rec["file"] for rec in results[0].records]
            by_file = [{rec["file"]: rec for rec in r.records} for r in results]
            worst = {
                d: float(np.mean([all(r[f][d] == r[f]["clean"] for r in by_file) for f in files]))
                for d in self.defences
            }
            minimum = {d: min(r.agreement(d) for r in results) for d in self.defences}
            summaries.append(ThreatSummary(model, [r.name for r in results], len(files), worst, minimum))
        return summaries

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "attacks": [r.to_dict() for r in self.results],
            "threat_models": {t.name: t.to_dict() for t in self.threat_models()},
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


def runtime_purify_fn(
    model: str | os.PathLike[str],
    backend: str = "auto",
    precision: str | None = None,
    device: str | None = None,
) -> tuple[PurifyFn, str]:
    """A ``purify(images, dynamic)`` over the runtime, and its one-line description.

    A ``DynamicDefense`` with a fixed seed gives successive calls successive noise indices, so a whole
    evaluation is replayable; one without a seed draws fresh noise for every call.
    """
    from nrp_deploy.runtime import load_purifier

    purifier = load_purifier(model, backend=backend, precision=precision, device=device)
    offsets: dict[DynamicDefense, int] = {}

    def purify(images: np.ndarray, dynamic: DynamicDefense | None) -> np.ndarray:
        if dynamic is None:
            return purifier(images)
        if dynamic.seed is None:
            return purifier(images, dynamic=dynamic)
        offset = offsets.get(dynamic, 0)
        offsets[dynamic] = offset + len(images)
        return purifier(images, dynamic=dynamic, start_index=offset)

    return purify, purifier.describe()


def evaluate(
    inputs: Iterable[str | os.PathLike[str]],
    options: EvalOptions | None = None,
    *,
    purify: PurifyFn | None = None,
    progress: bool = True,
) -> EvalReport:
    """Attack every image under ``inputs`` with each attack ``options`` chooses and classify it behind
    each defence (``EvalOptions`` says what is run and how).

    ``purify`` replaces the runtime as the defence (then ``backend`` and ``precision`` are unused): a
    ``purify(images, dynamic)`` on float32 NCHW [0, 1] arrays, ``dynamic`` None or a ``DynamicDefense``.
    """
    options = options or EvalOptions()
    extra_defences = baseline_defences(options.baselines)
    tasks = collect_images(inputs)
    if not tasks:
        raise InputError("no images found in the inputs")
    failed: list[tuple[str, str]] = []
    batches = _batches(tasks, options.batch_size, failed)
    if not batches:
        raise InputError("no readable images: " + "; ".join(f"{path}: {error}" for path, error in failed))
    description = "custom purify function"
    if purify is None:
        purify, description = runtime_purify_fn(
            options.model, options.backend, options.precision, options.device
        )
    suite = AttackSuite(options, deployed=lambda x: purify(x, None))
    level = {"sigma": options.noise_sigma, "eps": options.noise_eps}
    noise = {"dynamic": DynamicDefense(**level, seed=options.seed), "dynamic-fresh": DynamicDefense(**level)}
    attacks = options.resolved
    defences = (*DEFENCES, *extra_defences)
    results = {a: AttackResult(a, 0.0 if a == "none" else options.eps, defences) for a in attacks}
    started = time.perf_counter()
    bar = tqdm(total=len(batches) * len(attacks), unit="attack-batch", disable=not progress, file=sys.stderr)
    for names, images in batches:
        x = images_to_tensor(images, options.device)
        with torch.no_grad():
            clean_pred = suite.target(x).argmax(1).tolist()
        for attack in attacks:
            bar.set_description(attack)
            start = time.perf_counter()
            adv, targets = suite.run(attack, x)
            adv_images = tensor_to_images(adv, images, options.eps) if attack != "none" else images
            _score(
                results[attack],
                names,
                images,
                adv_images,
                clean_pred,
                targets,
                suite.target,
                purify,
                noise,
                extra_defences,
                options.device,
                options.grid_images,
            )
            results[attack].seconds += time.perf_counter() - start
            bar.update(1)
    bar.close()
    return EvalReport(
        _settings(options, suite, description, batches, time.perf_counter() - started),
        [results[a] for a in attacks],
        failed,
    )


def _settings(
    options: EvalOptions, suite: AttackSuite, description: str, batches, seconds: float
) -> dict[str, Any]:
    used_aliases = {a: ALIASES[a] for a in options.attacks if a.strip() in ALIASES}
    return {
        "model": os.fspath(options.model),
        "defence": description,
        "attack_model": os.fspath(options.attack_model or options.model),
        "classifier": suite.target.describe(),
        "sources": suite.describe_sources(),
        "ssp_features": f"{suite.features.name}/{suite.features.layer}"
        if suite.features is not None
        else None,
        "threat_models": {
            t: [a for a in options.resolved if CATALOGUE[a].threat_model == t]
            for t in THREAT_MODELS
            if any(CATALOGUE[a].threat_model == t for a in options.resolved)
        },
        "aliases": used_aliases,
        "baselines": list(options.baselines),
        "eps": options.eps,
        "iterations": options.iterations,
        "eot_samples": options.eot_samples,
        "pgd": "targeted" if options.targeted else "untargeted",
        "random_start": options.random_start,
        "restarts": options.restarts,
        "seed": options.seed,
        "dynamic": {
            "sigma": options.noise_sigma,
            "eps": options.noise_eps,
            "seed": options.seed,
            "fresh": "a new OS-drawn seed per call (not replayable)",
        },
        "device": options.device,
        "images": sum(len(n) for n, _ in batches),
        "seconds": round(seconds, 1),
        "classifier_name": label(options.classifier),
    }


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
    noise: dict[str, DynamicDefense],
    extra_defences: dict[str, Callable[[np.ndarray], np.ndarray]],
    device: str,
    grid_images: int,
) -> None:
    adv_float = _to_float(adversarial)
    outputs = {
        "undefended": adversarial,
        "purified": _to_uint8(purify(adv_float, None)),
        **{d: _to_uint8(purify(adv_float, dynamic)) for d, dynamic in noise.items()},
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
