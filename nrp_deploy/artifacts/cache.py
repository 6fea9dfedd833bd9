"""The artifact cache folder: where ONNX exports of checkpoints live, and how a cached one is found.

An entry is keyed by the checkpoint's sha256, its kind (the precision, plus the INT8 method when it is not
the default) and the opset: ``<sha256[:16]>-<label>-opset<N>.onnx`` with its sidecar beside it. Only an
entry whose sidecar checks out (the bytes it describes, the checkpoint and precision asked for) is found;
filling the cache on a miss is the runtime's job (``runtime.on_demand``). The package ships entries of its
own, read-only, for its default purifier (``assets.shipped_artifacts_dir``): they are searched after the
cache folder, so an install without torch, which cannot export, still runs the default. TensorRT engines built on demand
live in ``tensorrt/`` below the same folder, and ONNX Runtime's TensorRT EP caches in ``ort-trt/``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nrp_deploy.artifacts.metadata import verify_artifact
from nrp_deploy.assets import shipped_artifacts_dir
from nrp_deploy.errors import MetadataError, StaleArtifactError
from nrp_deploy.fileutil import user_cache_dir

log = logging.getLogger(__name__)

CACHE_ENV = "NRP_DEPLOY_CACHE"


def cache_dir() -> Path:
    """``$NRP_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/nrp_deploy/artifacts`` (``~/.cache`` by default)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else user_cache_dir("artifacts")


def onnx_label(precision: str, int8_method: str = "modelopt") -> str:
    """The kind part of a cached ONNX's name: the precision, plus the INT8 method when it is not ModelOpt.

    ORT artifacts are exported with the default CPU target, ``any``; the name says so, which also keeps
    older full-range ``int8-ort`` entries out of the lookup.
    """
    return precision if precision != "int8" or int8_method == "modelopt" else f"int8-{int8_method}-any"


def cached_onnx_path(sha256: str, label: str, opset: int) -> Path:
    """Where the cache keeps the ONNX of checkpoint ``sha256`` of kind ``label`` (see ``onnx_label``) and
    ``opset``."""
    return cache_dir() / f"{sha256[:16]}-{label}-opset{opset}.onnx"


def find_cached_onnx(sha256: str, label: str, precision: str, opset: int | None) -> Path | None:
    """A cached artifact of this checkpoint and kind whose sidecar checks out: from the cache folder, then
    from those the package ships; in each, the highest opset first."""
    pattern = f"{sha256[:16]}-{label}-opset{opset if opset is not None else '*'}.onnx"
    candidates = [
        path
        for folder in (cache_dir(), shipped_artifacts_dir())
        for path in sorted(folder.glob(pattern), key=_opset_of_name, reverse=True)
    ]
    for path in candidates:
        try:
            metadata = verify_artifact(path)
        except (MetadataError, StaleArtifactError) as exc:
            log.warning("ignoring cached artifact %s: %s", path, exc)
            continue
        if metadata.source.get("sha256") == sha256 and metadata.precision == precision:
            return path
    return None


def _opset_of_name(path: Path) -> int:
    tail = path.stem.rpartition("-opset")[2]
    return int(tail) if tail.isdigit() else -1
