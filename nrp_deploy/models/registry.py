"""The model registry: names that resolve to weight files with a recorded provenance.

The registry's manifest ships inside the package (``nrp_deploy/assets/models/manifest.json``): each entry
names its file, architecture and config, sha256, where it came from and what it measures. ``default`` is
the purifier this project trains and ships beside the manifest; ``NRP`` and ``NRP_resG`` are the
authors' published checkpoints, which users download by hand into the models folder:
``$NRP_DEPLOY_MODELS_DIR`` if set, else the per-user ``~/.cache/nrp_deploy/models`` (under
``$XDG_CACHE_HOME`` when that is set). A ``manifest.json`` in the models folder adds entries of its own
(``nrp train --publish`` writes one) and overrides shipped ones of the same name. In a source checkout,
with ``$NRP_DEPLOY_MODELS_DIR`` unset, the checkout's ``saved_models/`` is searched too, for development.
This module is torch-free so that the runtime can resolve names without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nrp_deploy.assets import shipped_models_dir
from nrp_deploy.errors import ChecksumError, ModelNotFoundError
from nrp_deploy.fileutil import sha256_file, user_cache_dir

MODELS_DIR_ENV = "NRP_DEPLOY_MODELS_DIR"
MANIFEST = "manifest.json"


def models_dir() -> Path:
    """The user's models folder: ``$NRP_DEPLOY_MODELS_DIR`` if set, else ``~/.cache/nrp_deploy/models``."""
    override = os.environ.get(MODELS_DIR_ENV)
    return Path(override) if override else user_cache_dir("models")


def _checkout_models_dir() -> Path | None:
    """``saved_models/`` of the source checkout this package is imported from, if it is one."""
    root = Path(__file__).resolve().parents[2]
    folder = root / "saved_models"
    return folder if (root / "setup.py").is_file() and folder.is_dir() else None


def search_dirs() -> list[Path]:
    """Where registry files that do not ship with the package are looked for, in order."""
    folders = [models_dir()]
    checkout = None if os.environ.get(MODELS_DIR_ENV) else _checkout_models_dir()
    return folders + ([checkout] if checkout else [])


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
    location: Path | None = field(default=None, compare=False)  # the folder of the manifest it came from

    @classmethod
    def from_dict(cls, data: dict[str, Any], location: Path | None = None) -> ManifestEntry:
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
            location=location,
        )


def read_manifest(directory: Path) -> dict[str, ManifestEntry]:
    """The entries of ``directory/manifest.json`` (none if there is no such file)."""
    path = directory / MANIFEST
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {e["name"]: ManifestEntry.from_dict(e, directory) for e in data.get("models", [])}


def load_manifest() -> dict[str, ManifestEntry]:
    """The registry: the shipped manifest, then the models folders' own manifests (later names win)."""
    entries = read_manifest(shipped_models_dir())
    for folder in reversed(search_dirs()):
        entries.update(read_manifest(folder))
    return entries


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
        candidates = [folder / entry.file for folder in (entry.location, *search_dirs()) if folder]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            hint = entry.how_to_get or "it is not shipped with this package"
            looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
            raise ModelNotFoundError(
                f"model {text!r} needs {entry.file}, which is in none of: {looked}. {hint}"
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
