"""The default purifier's FP32 ONNX that ships in the package (for installs without torch) is the export of
today's default weights, and its sidecar's verdict agrees with a measurement made here.

When ``nrp train --publish`` replaces the default weights, these fail until scripts/ship_default_onnx.py
is run again.
"""

from __future__ import annotations

import numpy as np
import pytest

from nrp_deploy.artifacts.cache import find_cached_onnx
from nrp_deploy.artifacts.metadata import verify_artifact
from nrp_deploy.artifacts.sources import identify
from nrp_deploy.assets import shipped_artifacts_dir
from nrp_deploy.export.fidelity import measure_fidelity
from nrp_deploy.models import load_model

MAX_SHIPPED_BYTES = 4 << 20  # the wheel stays small: the default's FP32 ONNX is about 1.8 MB


@pytest.fixture(scope="module")
def shipped():
    (onnx,) = shipped_artifacts_dir().glob("*.onnx")
    return onnx


def test_the_shipped_onnx_is_the_export_of_the_default_weights(shipped, tmp_path, monkeypatch):
    default = identify("default")
    metadata = verify_artifact(shipped)  # the bytes are the ones the sidecar describes
    assert metadata.precision == "fp32" and metadata.source["sha256"] == default.sha256
    assert metadata.source["path"] == "default"  # found on any install, not on the machine that exported it
    assert metadata.model == {"architecture": default.spec.architecture, "config": default.spec.config}
    assert metadata.verdict.passed
    assert shipped.stat().st_size < MAX_SHIPPED_BYTES
    # An empty cache folder falls back to the shipped one.
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path))
    assert find_cached_onnx(default.sha256, "fp32", "fp32", None) == shipped


def test_the_shipped_verdict_agrees_with_a_measurement(shipped):
    images = np.random.default_rng(21).random((2, 3, 40, 36), dtype=np.float32)
    measured = measure_fidelity(shipped, load_model("default"), images)
    recorded = verify_artifact(shipped)
    assert measured.psnr_db >= recorded.min_psnr_db
    assert measured.max_abs < 1e-4 and recorded.fidelity.max_abs < 1e-4
