"""One export entry point for every precision: what the runtime calls to fill its artifact cache.

``export_at_precision("fp32" | "fp16" | "int8", ...)`` runs ``export_onnx``, ``export_fp16`` or
``export_int8`` with their defaults (calibration on the example photos), so the runtime's lazy import of
export (``runtime.on_demand``) names one module and one function.
"""

from __future__ import annotations

import os

from nrp_deploy.artifacts.metadata import DEFAULT_OPSET, PRECISIONS
from nrp_deploy.errors import ExportError
from nrp_deploy.export.fp16 import Fp16Options, export_fp16
from nrp_deploy.export.int8 import Int8Options, export_int8
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.export.output import ExportResult, ModelLike


def export_at_precision(
    precision: str,
    source: ModelLike,
    output: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    int8_method: str = "modelopt",
    overwrite: bool = False,
) -> ExportResult:
    """Export ``source`` to ``output`` at ``precision``; ``int8_method`` picks the INT8 quantiser."""
    if precision == "fp32":
        return export_onnx(source, output, opset=opset, overwrite=overwrite)
    if precision == "fp16":
        return export_fp16(source, output, options=Fp16Options(opset=opset), overwrite=overwrite)
    if precision == "int8":
        options = Int8Options(method=int8_method, opset=opset)
        return export_int8(source, output, options=options, overwrite=overwrite)
    raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
