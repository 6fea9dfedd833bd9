"""Export the default purifier's FP32 ONNX and its CPU INT8 Q/DQ ONNX (ONNX Runtime's static quantisation,
portable ``any`` weight range), with their sidecars, into the package (nrp_deploy/assets/artifacts/).

An install without torch (``nrp-deploy[cpu]``) cannot export, so it runs the default purifier from these
shipped artifacts, which the artifact-cache lookup finds under the names the cache would give them; the
INT8 one lets ``auto`` (``runtime.auto``, which exports no INT8 itself) run the default at INT8 where that
is fastest, with or without torch. Each sidecar
is the export's own, fidelity verdict included (measured against FP32 torch), with one change: the source
path is the registry name ``default`` instead of this machine's path to the weights, so that converting the
shipped ONNX (to FP16 or INT8) finds the weights on any install. Run it whenever ``nrp train --publish``
replaces the default weights; tests/test_shipped_artifacts.py fails until then.

Usage: python scripts/ship_default_onnx.py   (needs torch and the export extra)
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from nrp_deploy.artifacts.cache import onnx_label
from nrp_deploy.artifacts.metadata import DEFAULT_OPSET, read_metadata, verify_artifact, write_metadata
from nrp_deploy.export.precisions import export_at_precision
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.models.registry import resolve

TARGET = Path(__file__).resolve().parents[1] / "nrp_deploy" / "assets" / "artifacts"


#: (precision, INT8 method) of each shipped artifact: the method the runtime's CPU path looks up.
SHIPPED = (("fp32", "modelopt"), ("int8", "ort"))


def main() -> None:
    weights = resolve("default").path
    TARGET.mkdir(exist_ok=True)
    for old in TARGET.glob("*.onnx*"):
        old.unlink()
    for precision, method in SHIPPED:
        name = f"{sha256_file(weights)[:16]}-{onnx_label(precision, method)}-opset{DEFAULT_OPSET}.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            result = export_at_precision(
                precision, "default", Path(tmp) / name, opset=DEFAULT_OPSET, int8_method=method
            )
            metadata = read_metadata(result.path)
            portable = replace(metadata, source={**metadata.source, "path": "default"})
            (TARGET / name).write_bytes(Path(result.path).read_bytes())
            write_metadata(TARGET / name, portable)
        verify_artifact(TARGET / name)
        print(f"{TARGET / name}: {(TARGET / name).stat().st_size} bytes; {portable.verdict.line}")


if __name__ == "__main__":
    main()
