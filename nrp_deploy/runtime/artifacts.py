"""Model sources and the artifact cache: from what the user named to a file a backend can run.

``identify`` turns a registry name or a path into a ``ModelSource`` (checkpoint, ONNX or TensorRT engine),
torch-free. ``onnx_for`` gives the ONNX a backend needs: an ONNX source as it is (its sidecar checked), or
for a checkpoint an artifact in the cache, keyed by the checkpoint's sha256, the precision and the opset,
and exported there on first use.

Two deliberate exceptions to the package's dependency direction (runtime and export are peers) live here:
the sidecar format is read through ``nrp_deploy.export.metadata``, which is torch-free and is the one
definition of that format; and a missing artifact is created by importing the export API lazily, so
torch (and the export tool chain) is needed only on a cache miss, and the error says so when it is absent.
A production machine that ships its ONNX artifacts, or a warm cache, never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from nrp_deploy.cpu_features import int8_target_mismatch
from nrp_deploy.errors import (
    BackendUnavailableError,
    FidelityError,
    InputError,
    MetadataError,
    StaleArtifactError,
)
from nrp_deploy.export.metadata import (
    ArtifactMetadata,
    Verdict,
    read_metadata,
    sidecar_path,
    verify_artifact,
)
from nrp_deploy.fileutil import sha256_file, user_cache_dir
from nrp_deploy.models.registry import resolve
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime.backends.base import PRECISIONS, ModelSource

log = logging.getLogger(__name__)

CACHE_ENV = "NRP_DEPLOY_CACHE"
ENGINE_SUFFIXES = frozenset({".engine", ".plan", ".trt"})
_EXPORTERS = {
    "fp32": ("nrp_deploy.export.onnx", "export_onnx"),
    "fp16": ("nrp_deploy.export.fp16", "export_fp16"),
    "int8": ("nrp_deploy.export.int8", "export_int8"),
}


def cache_dir() -> Path:
    """``$NRP_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/nrp_deploy/artifacts`` (``~/.cache`` by default)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else user_cache_dir("artifacts")


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


def check_verdict(path: Path, verdict: Verdict, allow_failed: bool) -> None:
    """Refuse an artifact whose fidelity check FAILed, unless the caller allows it (then warn)."""
    if verdict.passed:
        return
    if not allow_failed:
        raise FidelityError(
            f"{path} failed its fidelity check and is not used: {verdict.line}. Re-export it (other "
            "calibration images, a higher precision), or pass allow_failed=True (--allow-failed) to use it anyway"
        )
    log.warning("using %s although it failed its fidelity check (allow_failed): %s", path, verdict.line)


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


def cached_onnx_path(sha256: str, label: str, opset: int) -> Path:
    """Where the cache keeps the ONNX of checkpoint ``sha256`` of kind ``label`` (the precision, plus the
    INT8 method when it is not the default) and ``opset``."""
    return cache_dir() / f"{sha256[:16]}-{label}-opset{opset}.onnx"


def onnx_for(
    source: ModelSource, precision: str, opset: int | None = None, int8_method: str = "modelopt"
) -> Path:
    """The ONNX that runs ``source`` at ``precision``: the source itself, a cached export, or a new one.

    ``int8_method`` picks the INT8 quantiser for a new INT8 export: ``modelopt`` (Q/DQ for TensorRT and
    GPUs) or ``ort`` (ONNX Runtime's static quantisation, faster on CPUs); each is cached separately.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if source.kind == "onnx":
        if source.precision not in (None, precision):
            raise InputError(
                f"{source.path} is a {source.precision} model but precision {precision} was asked: pass the "
                f"{source.precision} precision, or the checkpoint to have the {precision} model made"
            )
        return source.path
    if source.kind != "checkpoint":
        raise InputError(f"{source.path} is a TensorRT engine; it has no ONNX to run")
    # ORT artifacts are exported with the default CPU target, ``any``; the name says so, which also keeps
    # older full-range ``int8-ort`` entries out of the lookup
    label = precision if precision != "int8" or int8_method == "modelopt" else f"int8-{int8_method}-any"
    found = _find_cached(source.sha256, label, precision, opset)
    if found is not None:
        log.info("using cached %s ONNX %s", label, found)
        check_verdict(found, read_metadata(found).verdict, source.allow_failed)
        return found
    return _export(source, precision, label, opset, int8_method)


def _find_cached(sha256: str, label: str, precision: str, opset: int | None) -> Path | None:
    """A cached artifact of this checkpoint and kind whose sidecar checks out (highest opset first)."""
    pattern = f"{sha256[:16]}-{label}-opset{opset if opset is not None else '*'}.onnx"
    candidates = sorted(cache_dir().glob(pattern), key=_opset_of_name, reverse=True)
    for path in candidates:
        try:
            metadata = verify_artifact(path)
        except (MetadataError, StaleArtifactError) as exc:
            log.warning("ignoring cached artifact %s: %s", path, exc)
            continue
        if metadata.source.get("sha256") == sha256 and metadata.precision == precision:
            return path
    return None


def _cpu_target_mismatch(metadata: ArtifactMetadata) -> str | None:
    """Why an ONNX Runtime INT8 artifact would saturate on this CPU, or None (see ``cpu_features``).

    ORT artifacts made before targets were recorded have full-range weights, so they count as ``vnni``.
    """
    calibration = metadata.calibration or {}
    legacy = "vnni" if calibration.get("method") == "ort" else None
    return int8_target_mismatch(calibration.get("target_cpu", legacy))


def _opset_of_name(path: Path) -> int:
    tail = path.stem.rpartition("-opset")[2]
    return int(tail) if tail.isdigit() else -1


def _export(source: ModelSource, precision: str, label: str, opset: int | None, int8_method: str) -> Path:
    """Export ``source`` into the cache with the export API, imported here so torch is needed only now."""
    module_name, function_name = _EXPORTERS[precision]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"no cached {label} ONNX for {source.path} (sha256 {source.sha256[:16]}) in {cache_dir()}, and "
            f"making one needs the export tools, which cannot be imported here ({exc}): install torch and "
            "'nrp-deploy[export]', or pass a prebuilt .onnx with its .json sidecar"
        ) from exc
    if opset is None:
        opset = importlib.import_module("nrp_deploy.export.onnx").DEFAULT_OPSET
    output = cached_onnx_path(source.sha256, label, opset)
    log.warning("exporting %s to %s ONNX in the artifact cache (first use): %s", source.path, label, output)
    extra = {"method": int8_method} if precision == "int8" else {}
    result = getattr(module, function_name)(str(source.path), output, opset=opset, overwrite=True, **extra)
    log.info("%s", result.verdict.line)
    check_verdict(Path(result.path), result.verdict, source.allow_failed)
    return Path(result.path)
