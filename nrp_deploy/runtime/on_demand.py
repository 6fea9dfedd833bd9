"""The ONNX a backend runs: the source itself, a cached export, or a new export made on demand.

``onnx_for`` answers for an ONNX source (its precision checked) and for a checkpoint: an artifact in the
cache (``artifacts.cache``), keyed by the checkpoint's sha256, the precision and the opset, and exported
there on first use. That export is the runtime's one arrow up to ``export``: a lazy import, here and nowhere
else, so torch (and the export tool chain) is needed only on a cache miss, and the error says so when it
is absent. A production machine that ships its ONNX artifacts, or a warm cache, never imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nrp_deploy.artifacts.cache import cache_dir, cached_onnx_path, find_cached_onnx, onnx_label
from nrp_deploy.artifacts.metadata import DEFAULT_OPSET, PRECISIONS, check_verdict, read_metadata
from nrp_deploy.artifacts.sources import ModelSource
from nrp_deploy.errors import BackendUnavailableError, InputError

log = logging.getLogger(__name__)


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
    label = onnx_label(precision, int8_method)
    found = find_cached_onnx(source.sha256, label, precision, opset)
    if found is not None:
        log.info("using cached %s ONNX %s", label, found)
        check_verdict(found, read_metadata(found).verdict, source.allow_failed)
        return found
    return _export(source, precision, label, DEFAULT_OPSET if opset is None else opset, int8_method)


def _export(source: ModelSource, precision: str, label: str, opset: int, int8_method: str) -> Path:
    """Export ``source`` into the cache with the export API, imported here so torch is needed only now."""
    try:
        from nrp_deploy.export.precisions import export_at_precision  # the one arrow up to export
    except ImportError as exc:
        raise BackendUnavailableError(
            f"no cached {label} ONNX for {source.path} (sha256 {source.sha256[:16]}) in {cache_dir()}, and "
            f"making one needs the export tools, which cannot be imported here ({exc}): install torch and "
            "'nrp-deploy[export]', or pass a prebuilt .onnx with its .json sidecar"
        ) from exc
    output = cached_onnx_path(source.sha256, label, opset)
    log.warning("exporting %s to %s ONNX in the artifact cache (first use): %s", source.path, label, output)
    result = export_at_precision(
        precision, str(source.path), output, opset=opset, int8_method=int8_method, overwrite=True
    )
    log.info("%s", result.verdict.line)
    check_verdict(Path(result.path), result.verdict, source.allow_failed)
    return Path(result.path)
