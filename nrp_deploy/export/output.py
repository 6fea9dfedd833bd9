"""The output of an export: the model and its metadata sidecar, written the same way for every precision.

The model bytes are written atomically first, then the sidecar (also atomically) with the sha256 of
exactly those bytes, so a reader never pairs a model with metadata that describes another one. An
existing output is refused unless ``overwrite`` is given, before any slow work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrp_deploy.artifacts.metadata import (
    ArtifactMetadata,
    Fidelity,
    Verdict,
    judge,
    tool_versions,
    utc_now,
    write_metadata,
)
from nrp_deploy.errors import ExportError
from nrp_deploy.fileutil import sha256_file, write_bytes_atomic
from nrp_deploy.models import LoadedModel

#: What an export starts from: a registry name, a checkpoint path, or a model already loaded.
ModelLike = str | os.PathLike[str] | LoadedModel


@dataclass(frozen=True)
class ExportResult:
    """An artifact on disk, its sidecar, and what the sidecar says (``.verdict.line`` for users)."""

    path: Path
    metadata_path: Path
    metadata: ArtifactMetadata

    @property
    def verdict(self) -> Verdict:
        return self.metadata.verdict


def check_output(output: str | os.PathLike[str], overwrite: bool) -> Path:
    path = Path(output)
    if path.suffix != ".onnx":
        raise ExportError(f"output {path} should end in .onnx")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    return path


def source_info(loaded: LoadedModel) -> dict[str, Any]:
    return {"name": loaded.name, "path": str(Path(loaded.path).resolve()), "sha256": loaded.sha256}


def write_artifact(
    output: Path,
    model_bytes: bytes,
    *,
    precision: str,
    io_dtype: str,
    opset: int,
    loaded: LoadedModel,
    fidelity: Fidelity,
    fidelity_images: dict[str, Any],
    min_psnr_db: float,
    calibration: dict[str, Any] | None = None,
    derived_from: dict[str, Any] | None = None,
) -> ExportResult:
    """Write ``model_bytes`` to ``output`` and its sidecar; returns both paths and the metadata."""
    write_bytes_atomic(output, model_bytes)
    metadata = ArtifactMetadata(
        artifact=output.name,
        artifact_sha256=sha256_file(output),
        precision=precision,
        io_dtype=io_dtype,
        opset=opset,
        source=source_info(loaded),
        model=loaded.spec.to_dict(),
        fidelity=fidelity,
        fidelity_images=fidelity_images,
        min_psnr_db=min_psnr_db,
        verdict=judge(precision, output.name, fidelity, min_psnr_db, fidelity_images["description"]),
        calibration=calibration,
        derived_from=derived_from,
        tools=tool_versions(),
        created=utc_now(),
    )
    return ExportResult(output, write_metadata(output, metadata), metadata)
