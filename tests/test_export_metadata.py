"""The artifact sidecar: round trip, the verdict line, tamper / missing / malformed detection, torch-free import."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from nrp_deploy.artifacts.metadata import (
    DEFAULT_MIN_PSNR_DB,
    PSNR_CAP_DB,
    ArtifactMetadata,
    Fidelity,
    judge,
    psnr_db,
    read_metadata,
    sidecar_path,
    verify_artifact,
    write_metadata,
)
from nrp_deploy.errors import MetadataError, StaleArtifactError
from nrp_deploy.fileutil import sha256_file


def _metadata(artifact, psnr: float = 61.0) -> ArtifactMetadata:
    fidelity = Fidelity(max_abs=2e-3, mean_abs=1e-4, psnr_db=psnr)
    return ArtifactMetadata(
        artifact=artifact.name,
        artifact_sha256=sha256_file(artifact),
        precision="fp16",
        io_dtype="float32",
        opset=20,
        source={"name": "tiny", "path": "/x/tiny.pth", "sha256": "ab" * 32},
        model={"architecture": "NRP_resG", "config": {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 1}},
        fidelity=fidelity,
        fidelity_images={"description": "2 held-out crops of 32x32 px", "count": 2},
        min_psnr_db=50.0,
        verdict=judge("fp16", artifact.name, fidelity, 50.0, "2 held-out crops of 32x32 px"),
        calibration={"images": ["a.png"], "crop_size": 32, "count": 4, "nodes_fp32": ["n1"]},
        tools={"onnx": "1.23.2"},
        created="2026-01-01T00:00:00+00:00",
    )


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really a model, but bytes to hash")
    return path


def test_round_trip_and_verify(artifact):
    written = write_metadata(artifact, _metadata(artifact))
    assert written == sidecar_path(artifact) == artifact.with_name("model.onnx.json")
    data = json.loads(written.read_text())
    assert data["fidelity"] == {"max_abs": 2e-3, "mean_abs": 1e-4, "psnr_db": 61.0}
    assert data["verdict"]["passed"] is True
    back = verify_artifact(artifact)
    assert back == _metadata(artifact)
    assert back.calibration["nodes_fp32"] == ["n1"]


def test_changed_artifact_is_stale(artifact):
    write_metadata(artifact, _metadata(artifact))
    artifact.write_bytes(b"another model")
    with pytest.raises(StaleArtifactError, match="changed after export"):
        verify_artifact(artifact)


def test_missing_and_malformed_sidecars(artifact):
    with pytest.raises(MetadataError, match="has no metadata file"):
        read_metadata(artifact)
    sidecar_path(artifact).write_text("{not json")
    with pytest.raises(MetadataError, match="not readable JSON"):
        read_metadata(artifact)
    sidecar_path(artifact).write_text(json.dumps({"format": 99}))
    with pytest.raises(MetadataError, match="unsupported metadata format"):
        read_metadata(artifact)
    sidecar_path(artifact).write_text(json.dumps({"format": 1, "artifact": "model.onnx"}))
    with pytest.raises(MetadataError, match="malformed"):
        read_metadata(artifact)
    with pytest.raises(MetadataError, match="does not exist"):
        verify_artifact(artifact.with_name("absent.onnx"))


def test_verdict_lines():
    good = judge("int8", "m.onnx", Fidelity(0.02, 0.003, 41.25), 35.0, "4 held-out crops")
    assert good.passed
    assert good.line.startswith("PASS int8 m.onnx: PSNR 41.2 dB >= 35.0 dB vs FP32 torch")
    assert good.line.endswith("on 4 held-out crops")
    bad = judge("fp16", "m.onnx", Fidelity(0.1, 0.01, 49.9), DEFAULT_MIN_PSNR_DB["fp16"], "x")
    assert not bad.passed and bad.line.startswith("FAIL fp16 m.onnx: PSNR 49.9 dB < 50.0 dB")
    broken = judge("fp16", "m.onnx", Fidelity(math.inf, math.inf, -math.inf), 50.0, "x")
    assert not broken.passed
    # A non-finite error anywhere fails, whatever the PSNR figure beside it says.
    for max_abs in (math.inf, math.nan):
        assert not judge("fp32", "m.onnx", Fidelity(max_abs, 1e-9, 150.0), 80.0, "x").passed


def test_psnr():
    assert psnr_db(1e-4) == pytest.approx(40.0)
    assert psnr_db(0.0) == PSNR_CAP_DB
    assert psnr_db(1e-30) == PSNR_CAP_DB


def test_reader_imports_without_torch_or_onnx():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
        "import nrp_deploy.artifacts.metadata as m; print(m.read_metadata.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "read_metadata"


def test_one_psnr_serves_sidecars_metrics_and_the_benchmark():
    from nrp_deploy.artifacts import metadata
    from nrp_deploy.bench import harness
    from nrp_deploy.evaluation import metrics

    assert metrics.psnr is metadata.psnr and harness.psnr is metadata.psnr
    a = np.zeros((2, 3), dtype=np.float32)
    assert metadata.psnr(a, a) == math.inf  # uncapped for images; the sidecar caps (test_psnr)
    assert metadata.psnr(a, a + 0.01) == pytest.approx(metadata.psnr_db(1e-4)) == pytest.approx(40.0)
