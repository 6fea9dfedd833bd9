"""The ``saved_models`` registry: names that resolve to weight files with a recorded provenance.

``saved_models/manifest.json`` lists each model: its file, architecture and config, sha256, where it came
from and what it measures. ``default`` is the purifier this project trains and ships; ``NRP`` and
``NRP_resG`` are the authors' published checkpoints, which users download by hand and drop in unchanged.
This module is torch-free so that the runtime can resolve names without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nrp_deploy.errors import ChecksumError, ModelNotFoundError
from nrp_deploy.fileutil import sha256_file

MODELS_DIR_ENV = "NRP_DEPLOY_MODELS_DIR"
_REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "saved_models"


def models_dir() -> Path:
    """Where registry files live: ``$NRP_DEPLOY_MODELS_DIR`` if set, else the repository's saved_models/."""
    override = os.environ.get(MODELS_DIR_ENV)
    return Path(override) if override else _REPO_MODELS_DIR


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    file: str
    architecture: str
    config: dict[str, int]
    sha256: str | None = None
    provenance: str = ""
    how_to_get: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestEntry:
        known = {"name", "file", "architecture", "config", "sha256", "provenance", "how_to_get", "metrics"}
        return cls(
            name=data["name"],
            file=data["file"],
            architecture=data["architecture"],
            config=dict(data.get("config", {})),
            sha256=data.get("sha256"),
            provenance=data.get("provenance", ""),
            how_to_get=data.get("how_to_get", ""),
            metrics=dict(data.get("metrics", {})),
            extra={k: v for k, v in data.items() if k not in known},
        )


def load_manifest(directory: Path | None = None) -> dict[str, ManifestEntry]:
    path = (directory or models_dir()) / "manifest.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {e["name"]: ManifestEntry.from_dict(e) for e in data.get("models", [])}


def registry_names() -> list[str]:
    return sorted(load_manifest())


@dataclass(frozen=True)
class ResolvedSource:
    """A model source turned into a file on disk, with its registry entry if it came from one."""

    path: Path
    entry: ManifestEntry | None = None

    @property
    def name(self) -> str:
        return self.entry.name if self.entry else self.path.stem


def resolve(source: str | os.PathLike[str], verify: bool = True) -> ResolvedSource:
    """A registry name or a path to a file; registry files are checked against their sha256."""
    text = os.fspath(source)
    manifest = load_manifest()
    if text in manifest:
        entry = manifest[text]
        path = models_dir() / entry.file
        if not path.is_file():
            hint = entry.how_to_get or "it is not shipped with this package"
            raise ModelNotFoundError(
                f"model {text!r} expects its weights at {path}, which does not exist. {hint}"
            )
        if verify and entry.sha256:
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise ChecksumError(
                    f"{path} has sha256 {actual}, but the manifest records {entry.sha256} for {text!r}: "
                    "the file is corrupt or a different checkpoint; replace it, or pass the path directly "
                    "to use it anyway"
                )
        return ResolvedSource(path, entry)
    path = Path(text)
    if path.exists():
        return ResolvedSource(path)
    known = ", ".join(sorted(manifest)) or "none"
    raise ModelNotFoundError(f"{text!r} is neither a file nor a registered model name (registered: {known})")
