"""Ship a finished training run into the model registry: weights file + manifest entry (the model card data).

The entry records what a user needs to trust and reproduce the model: architecture and config, sha256,
where the weights came from (data, steps, losses, the command), and the metrics measured on held-out
photos. Other entries of the manifest are kept untouched; an entry of the same name is replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from nrp_deploy.errors import InputError
from nrp_deploy.fileutil import atomic_output, sha256_file, write_json_atomic
from nrp_deploy.models.registry import models_dir
from nrp_deploy.training.config import RUN_SUMMARY, SKIMAGE, SNAPSHOT_DIR, WEIGHTS_NAME, TrainConfig


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{path} does not exist: {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc


def _data_description(data: str) -> dict[str, Any]:
    if data != SKIMAGE:
        return _corpus_description(data) or {"source": data}
    from nrp_deploy.training.data import SKIMAGE_HELD_OUT, SKIMAGE_TRAIN

    return {
        "source": "photos shipped in the scikit-image wheel (skimage/data/), no download",
        "train": list(SKIMAGE_TRAIN),
        "held_out": list(SKIMAGE_HELD_OUT),
    }


def _corpus_description(data: str) -> dict[str, Any] | None:
    """The photo corpus a ``<corpus>/train`` folder belongs to, from its manifest (None if it has none)."""
    manifest_path = Path(data).parent / "manifest.json"
    if Path(data).name != "train" or not manifest_path.is_file():
        return None
    manifest = _read_json(manifest_path, "")
    photos = manifest.get("photos", []) if isinstance(manifest, dict) else []
    if not photos:
        return None

    def ids(split: str) -> list[str]:
        return sorted(p["id"] for p in photos if p.get("split") == split)

    description = {
        "source": f"{data}: the photo corpus of scripts/build_photo_corpus.py (corpus/manifest.json)",
        "manifest_sha256": sha256_file(manifest_path),
        "train": ids("train"),
        "held_out": ids("heldout"),
    }
    if ids("validation"):  # a run's own split of the training photos (scripts/train_default.sh)
        description["validation"] = ids("validation")
    return description


def _loss_terms(config: dict[str, Any]) -> str:
    names = {
        "pixel_weight": "pixel",
        "identity_weight": "identity",
        "lowfreq_weight": "low-frequency",
        "logit_weight": "logit",
    }
    terms = ["feature"] + [name for key, name in names.items() if config.get(key, 0) > 0]
    if config.get("adv_weight", 0) > 0:
        terms.append("adversarial")
    return " + ".join(terms) + " loss"


def _adversaries(config: dict[str, Any]) -> str:
    text = f"SSP adversaries on {config['feature_model']} features"
    if config.get("pgd_fraction", 0) > 0 and config.get("classifiers"):
        share = round(100 * config["pgd_fraction"])
        text += f" and PGD ({share}% of the adversaries) on {' / '.join(config['classifiers'])} logits"
        if config.get("transfer_fraction", 0) > 0:
            steps = round(100 * config["transfer_fraction"])
            text += (
                f", replaced on {steps}% of the steps by MI-FGSM / DI-FGSM / TI-DIM on their logit ensemble"
            )
    if config.get("clean_noise_fraction", 0) > 0:
        text += "; clean crops with the dynamic defence's noise trained back to clean"
    return text


def _start(summary: dict[str, Any]) -> str:
    init = summary.get("init_weights_sha256")
    return f", fine-tuned from the weights with sha256 {init}" if init else ""


def _snapshot(run_dir: Path, path: Path) -> tuple[Path, int]:
    """A snapshot of this run (``snapshots/step_NNNNNN.safetensors``) and its step, refused otherwise."""
    match = re.fullmatch(r"step_(\d+)\.safetensors", path.name)
    if match is None or path.resolve().parent != (run_dir / SNAPSHOT_DIR).resolve() or not path.is_file():
        raise InputError(
            f"--snapshot {path}: not a snapshot of {run_dir} ({run_dir / SNAPSHOT_DIR}/step_N.safetensors)"
        )
    return path, int(match.group(1))


def _steps(steps: int, run_steps: int) -> str:
    return f"{steps} steps" if steps == run_steps else f"{steps} steps, a snapshot of a {run_steps}-step run,"


def condense_eval_report(report: dict[str, Any]) -> dict[str, Any]:
    """The model-card figures of an ``nrp eval`` report.json: settings and per-attack summaries only."""
    if "attacks" not in report or "settings" not in report:
        raise InputError("metrics must be an `nrp eval` report.json (with 'settings' and 'attacks')")
    keep = (
        "eps",
        "images",
        "agreement",
        "target_hits",
        "psnr_adversarial_db",
        "psnr_purified_db",
        "ssim_purified",
        "fidelity",
    )
    condensed = {
        "settings": report["settings"],
        "attacks": {a["attack"]: {k: a[k] for k in keep if k in a} for a in report["attacks"]},
    }
    if report.get("threat_models"):  # worst case and what each defence recovers, per threat model
        condensed["threat_models"] = report["threat_models"]
    return condensed


def publish_model(
    run_dir: str | os.PathLike[str],
    name: str,
    metrics: dict[str, dict[str, Any]] | None = None,
    directory: str | os.PathLike[str] | None = None,
    snapshot: str | os.PathLike[str] | None = None,
) -> Path:
    """Copy the run's weights to ``<directory>/<name>.safetensors`` and write its manifest entry.

    ``metrics`` maps a label (which images) to an ``nrp eval`` report.json's content; each is condensed
    to its settings and per-attack figures. ``snapshot`` publishes one of the run's ``snapshots/`` (chosen
    on validation photos) instead of its final weights; the entry names its step.

    ``directory`` defaults to the user's models folder (``registry.models_dir()``).
    Returns the path of the copied weights.
    """
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / RUN_SUMMARY, "the run has not finished (train it to the end first)")
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file() or sha256_file(weights) != summary["weights_sha256"]:
        raise InputError(f"{weights} is missing or differs from the weights recorded in {RUN_SUMMARY}")
    steps = summary["steps"]
    if snapshot is not None:
        weights, steps = _snapshot(run_dir, Path(snapshot))
    target_dir = Path(directory) if directory is not None else models_dir()
    target = target_dir / f"{name}.safetensors"
    with atomic_output(target) as fh, open(weights, "rb") as src:
        shutil.copyfileobj(src, fh)
    config = summary["config"]
    losses = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_losses"].items())
    entry = {
        "name": name,
        "file": target.name,
        "architecture": summary["spec"]["architecture"],
        "config": summary["spec"]["config"],
        "sha256": sha256_file(target),
        "provenance": (
            f"Trained by this project with `nrp train` ({_steps(steps, summary['steps'])} of the self-supervised NRP "
            f"objective: {_adversaries(config)}, {_loss_terms(config)}) on "
            f"{config['data']!r} data{_start(summary)}. Final training losses (mean of the last "
            f"{config['log_every']} steps): {losses}."
        ),
        "how_to_get": "Written by `nrp train --publish` beside this manifest.",
        "training": {
            "data": _data_description(config["data"]),
            "init_weights_sha256": summary.get("init_weights_sha256"),
            "steps": steps,
            "run_steps": summary["steps"],
            "final_losses": summary["final_losses"],
            "config": config,
            "command": TrainConfig(**config).command(out=str(run_dir)),
        },
        "metrics": {label: condense_eval_report(report) for label, report in (metrics or {}).items()},
    }
    manifest_path = target_dir / "manifest.json"
    manifest = _read_json(manifest_path, "") if manifest_path.is_file() else {"format": 1, "models": []}
    models = [m for m in manifest.get("models", []) if m.get("name") != name]
    manifest["models"] = [*models, entry]
    write_json_atomic(manifest_path, manifest)
    return target
