"""Model sources: from what the user named (a registry name or a path) to a file the runtime can run.

``identify`` turns a registry name or a path into a ``ModelSource`` (checkpoint, ONNX or TensorRT engine),
torch-free: an ONNX with a sidecar must match it, and an artifact whose fidelity check FAILed is refused
unless the caller allows it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from nrp_deploy.artifacts.metadata import (
    ArtifactMetadata,
    check_verdict,
    read_metadata,
    sidecar_path,
    verify_artifact,
)
from nrp_deploy.cpu_features import int8_target_mismatch
from nrp_deploy.errors import InputError
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.models.registry import resolve
from nrp_deploy.models.spec import ModelSpec

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = frozenset({".engine", ".plan", ".trt"})


@dataclass(frozen=True)
class ModelSource:
    """A model file the runtime was asked to run, resolved and identified (torch-free).

    ``kind`` is ``checkpoint`` (.pth / .safetensors), ``onnx`` or ``engine`` (a TensorRT plan). ``spec`` is
    the architecture when known (registry entry or artifact sidecar) and ``precision`` the precision an
    artifact was made at (None for checkpoints, and for artifacts without a sidecar). ``allow_failed``:
    the caller accepts an artifact whose fidelity check FAILed (otherwise it is refused).
    """

    kind: str
    path: Path
    name: str
    sha256: str
    spec: ModelSpec | None = None
    precision: str | None = None
    allow_failed: bool = False


def identify(source: str | os.PathLike[str], allow_failed: bool = False) -> ModelSource:
    """Resolve a registry name or path and say what it is; an ONNX with a sidecar must match it.

    An artifact whose sidecar records a FAILed fidelity check is refused (``FidelityError``) unless
    ``allow_failed``: its outputs were measured to be wrong.
    """
    if not isinstance(source, str | os.PathLike):
        raise InputError(
            f"model source must be a registry name or a path (str or os.PathLike), got {type(source).__name__}"
        )
    resolved = resolve(source)
    path = resolved.path
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a checkpoint, ONNX model or TensorRT engine")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _identify_onnx(path, resolved.name, allow_failed)
    kind = "engine" if suffix in ENGINE_SUFFIXES else "checkpoint"
    entry = resolved.entry
    spec = ModelSpec(entry.architecture, dict(entry.config)) if entry else None
    return ModelSource(
        kind=kind,
        path=path,
        name=resolved.name,
        sha256=sha256_file(path),
        spec=spec,
        allow_failed=allow_failed,
    )


def artifact_spec(path: Path) -> ModelSpec | None:
    """The architecture recorded in an artifact's sidecar, or None when it has none."""
    return ModelSpec.from_dict(read_metadata(path).model) if sidecar_path(path).is_file() else None


def _identify_onnx(path: Path, name: str, allow_failed: bool) -> ModelSource:
    """An ONNX with its sidecar checked; one without a sidecar runs, but nothing about it is known."""
    if not sidecar_path(path).is_file():
        log.warning(
            "%s has no metadata sidecar (%s): its architecture and precision are unknown and its fidelity "
            "unchecked; export with `nrp export` to get one",
            path,
            sidecar_path(path).name,
        )
        return ModelSource(
            kind="onnx", path=path, name=name, sha256=sha256_file(path), allow_failed=allow_failed
        )
    metadata = verify_artifact(path)
    check_verdict(path, metadata.verdict, allow_failed)
    mismatch = _cpu_target_mismatch(metadata)
    if mismatch:
        log.warning(
            "%s: %s; export it again on this machine (or with --target-cpu any) for exact INT8",
            path,
            mismatch,
        )
    return ModelSource(
        kind="onnx",
        path=path,
        name=name,
        sha256=metadata.artifact_sha256,
        spec=ModelSpec.from_dict(metadata.model),
        precision=metadata.precision,
        allow_failed=allow_failed,
    )


def _cpu_target_mismatch(metadata: ArtifactMetadata) -> str | None:
    """Why an ONNX Runtime INT8 artifact would saturate on this CPU, or None (see ``cpu_features``).

    ORT artifacts made before targets were recorded have full-range weights, so they count as ``vnni``.
    """
    calibration = metadata.calibration or {}
    legacy = "vnni" if calibration.get("method") == "ort" else None
    return int8_target_mismatch(calibration.get("target_cpu", legacy))
