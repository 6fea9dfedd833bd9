"""The default purifier's FP32 and CPU INT8 ONNX that ship in the package (for installs without torch, and
for ``auto``, which exports no INT8 itself) are exports of today's default weights, and their sidecars'
verdicts agree with measurements made here.

When ``nrp train --publish`` replaces the default weights, these fail until scripts/ship_default_onnx.py
is run again.
"""

from __future__ import annotations

import numpy as np
import pytest

from nrp_deploy.artifacts.cache import find_cached_onnx, onnx_label
from nrp_deploy.artifacts.metadata import verify_artifact
from nrp_deploy.artifacts.sources import identify
from nrp_deploy.assets import shipped_artifacts_dir
from nrp_deploy.export.calibration import CalibrationOptions
from nrp_deploy.export.fidelity import measure_fidelity
from nrp_deploy.models import load_model

#: The wheel stays small: the default's FP32 ONNX is about 1.8 MB, its INT8 about 0.5 MB.
MAX_SHIPPED_BYTES = 4 << 20
#: precision -> the label the cache gives it (the INT8 is ONNX Runtime's, for CPUs)
SHIPPED = {"fp32": onnx_label("fp32"), "int8": onnx_label("int8", "ort")}


@pytest.fixture(scope="module")
def shipped():
    found = {verify_artifact(path).precision: path for path in shipped_artifacts_dir().glob("*.onnx")}
    assert set(found) == set(SHIPPED) and len(found) == len(list(shipped_artifacts_dir().glob("*.onnx")))
    return found


@pytest.mark.parametrize("precision", SHIPPED)
def test_the_shipped_onnx_is_the_export_of_the_default_weights(precision, shipped, tmp_path, monkeypatch):
    default = identify("default")
    metadata = verify_artifact(shipped[precision])  # the bytes are the ones the sidecar describes
    assert metadata.source["sha256"] == default.sha256
    assert metadata.source["path"] == "default"  # found on any install, not on the machine that exported it
    assert metadata.model == {"architecture": default.spec.architecture, "config": default.spec.config}
    assert metadata.verdict.passed
    assert sum(path.stat().st_size for path in shipped.values()) < MAX_SHIPPED_BYTES
    # An empty cache folder falls back to the shipped one.
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path))
    assert find_cached_onnx(default.sha256, SHIPPED[precision], precision, None) == shipped[precision]


def test_the_shipped_fp32_verdict_agrees_with_a_measurement(shipped):
    images = np.random.default_rng(21).random((2, 3, 40, 36), dtype=np.float32)
    measured = measure_fidelity(shipped["fp32"], load_model("default"), images)
    recorded = verify_artifact(shipped["fp32"])
    assert measured.psnr_db >= recorded.min_psnr_db
    assert measured.max_abs < 1e-4 and recorded.fidelity.max_abs < 1e-4


def test_the_shipped_int8_is_portable_and_its_verdict_agrees_with_a_measurement(shipped):
    recorded = verify_artifact(shipped["int8"])
    assert recorded.calibration["method"] == "ort" and recorded.calibration["target_cpu"] == "any"
    _, held = CalibrationOptions(
        crop_size=96, holdout_count=2, seed=7
    ).crops()  # other crops than the export's
    measured = measure_fidelity(shipped["int8"], load_model("default"), held.batch)
    assert measured.psnr_db >= recorded.min_psnr_db
