"""Export the default purifier's FP32 ONNX, with its sidecar, into the package (nrp_deploy/assets/artifacts/).

An install without torch (``nrp-deploy[cpu]``) cannot export, so it runs the default purifier from this
shipped artifact, which the artifact-cache lookup finds under the name the cache would give it. The sidecar
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
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.models.registry import resolve

TARGET = Path(__file__).resolve().parents[1] / "nrp_deploy" / "assets" / "artifacts"


def main() -> None:
    weights = resolve("default").path
    name = f"{sha256_file(weights)[:16]}-{onnx_label('fp32')}-opset{DEFAULT_OPSET}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        result = export_onnx("default", Path(tmp) / name, opset=DEFAULT_OPSET)
        metadata = read_metadata(result.path)
        portable = replace(metadata, source={**metadata.source, "path": "default"})
        TARGET.mkdir(exist_ok=True)
        for old in TARGET.glob("*.onnx*"):
            old.unlink()
        (TARGET / name).write_bytes(Path(result.path).read_bytes())
        write_metadata(TARGET / name, portable)
    verify_artifact(TARGET / name)
    print(f"{TARGET / name}: {(TARGET / name).stat().st_size} bytes; {portable.verdict.line}")


if __name__ == "__main__":
    main()
