"""The OpenVINO runtime backend: the same contract as the others (artifacts and their verdicts, threads,
errors wrapped), from ``load_purifier`` and ``nrp purify``. Skipped where OpenVINO is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sidecars import write_sidecar

from nrp_deploy.cli import main
from nrp_deploy.errors import BackendUnavailableError, FidelityError, InputError
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.images import read_image, write_png
from nrp_deploy.models import ModelSpec
from nrp_deploy.runtime import OpenVinoOptions, load_purifier

pytest.importorskip("openvino")

IMAGES = np.random.default_rng(4).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("openvino") / "tiny.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 4, "nb": 1}).build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def eager(checkpoint) -> np.ndarray:
    with load_purifier(checkpoint, backend="torch") as purifier:
        return purifier(IMAGES)


def test_fp32_agrees_with_eager_torch(checkpoint, eager):
    with load_purifier(checkpoint, backend="openvino", threads=1) as purifier:
        out = purifier(IMAGES)
        assert purifier.backend_name == "openvino-cpu" and purifier.backend.threads == 1
    assert np.abs(out.astype(int) - eager).max() <= 1


def test_int8_runs_the_ort_qdq_artifact(checkpoint, eager):
    with load_purifier(checkpoint, backend="openvino", precision="int8", threads=1, allow_failed=True) as p:
        assert p.backend.precision == "int8" and "int8-ort-any" in p.backend.path.name
        assert p(IMAGES).shape == eager.shape


def test_a_failed_artifact_is_refused(checkpoint, tmp_path):
    onnx_path = tmp_path / "failed.onnx"
    export_onnx(str(checkpoint), onnx_path)
    write_sidecar(onnx_path, psnr_db=20.0)
    with pytest.raises(FidelityError, match="FAIL fp32"):
        load_purifier(onnx_path, backend="openvino")


def test_what_it_cannot_run_is_named(checkpoint):
    with pytest.raises(BackendUnavailableError, match="fp32 and int8 models, not fp16"):
        load_purifier(checkpoint, backend="openvino", precision="fp16")
    with pytest.raises(BackendUnavailableError, match="runs on the cpu"):
        load_purifier(checkpoint, backend="openvino", device="cuda")
    with pytest.raises(InputError, match="inference_precision"):
        OpenVinoOptions(inference_precision="fp8")
    with pytest.raises(InputError, match="runs an fp32 model in BF16"):
        load_purifier(
            checkpoint, backend="openvino", precision="int8", options={"inference_precision": "bf16"}
        )


def test_nrp_purify_with_the_openvino_backend(checkpoint, eager, tmp_path):
    write_png(tmp_path / "in" / "a.png", IMAGES[0])
    argv = ["purify", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(checkpoint)]
    assert main([*argv, "--backend", "openvino", "--threads", "1", "--no-progress"]) == 0
    assert np.abs(read_image(tmp_path / "out" / "a.png").astype(int) - eager[0]).max() <= 1
