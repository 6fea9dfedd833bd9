"""The FP32 starting point of a precision conversion: an existing FP32 ONNX artifact, or a fresh export.

FP16 and INT8 conversion work on an FP32 ONNX graph and are judged against the FP32 torch module, so both
are needed. Given a model (registry name, checkpoint, ``LoadedModel``), it is exported with
``export_onnx`` into a scratch folder (so the graph is the checked one). Given an ``.onnx`` file, its
sidecar must say FP32 and its bytes must match the sidecar, and the checkpoint it names is loaded as the
reference and must still have the recorded sha256: a conversion is never judged against another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrp_deploy.artifacts.metadata import DEFAULT_OPSET, verify_artifact
from nrp_deploy.errors import ExportError, StaleArtifactError
from nrp_deploy.export.onnx import as_loaded, export_onnx
from nrp_deploy.export.output import ModelLike
from nrp_deploy.models import LoadedModel, load_model


@dataclass(frozen=True)
class Fp32Source:
    onnx_path: Path
    loaded: LoadedModel
    derived_from: dict[str, Any] | None  # the FP32 artifact given, if one was


def fp32_source(source: ModelLike, workdir: Path, opset: int = DEFAULT_OPSET) -> Fp32Source:
    if not isinstance(source, LoadedModel) and os.fspath(source).endswith(".onnx"):
        return _from_artifact(Path(source))
    loaded = as_loaded(source)
    result = export_onnx(loaded, workdir / "fp32.onnx", opset=opset, overwrite=True)
    return Fp32Source(result.path, loaded, None)


def _from_artifact(path: Path) -> Fp32Source:
    metadata = verify_artifact(path)
    if metadata.precision != "fp32":
        raise ExportError(
            f"{path} is a {metadata.precision} artifact; convert from the FP32 ONNX or the model"
        )
    loaded = load_model(metadata.source["path"], device="cpu")
    if loaded.sha256 != metadata.source["sha256"]:
        raise StaleArtifactError(
            f"{path} was exported from {metadata.source['path']} with sha256 {metadata.source['sha256']}, "
            f"but that file now has sha256 {loaded.sha256}; export the ONNX again"
        )
    return Fp32Source(path, loaded, {"artifact": str(path.resolve()), "sha256": metadata.artifact_sha256})
