"""Fidelity verdicts that FAIL: a real INT8 export that is unfit to deploy, judged and refused.

The model is a tiny NRP whose trunk carries one outlier channel: channel 0 of every trunk activation is
10^4 times louder, and every convolution reading it divides its weights by 10^4, so the FP32 function is
unchanged. INT8 quantises an activation with one scale per tensor, so the quiet channels round to zero and
the INT8 output is far from FP32 torch: its fidelity check must FAIL, and the artifact must be refused
(``FidelityError``) unless ``allow_failed`` (``--allow-failed``) says to use it anyway, whether it was
exported by hand or on demand into the artifact cache. A verdict measured against the wrong model (the FP32
ONNX, or the artifact itself) would PASS at ~145-200 dB, and these tests would fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nrp_deploy.artifacts.cache import cache_dir
from nrp_deploy.artifacts.metadata import DEFAULT_MIN_PSNR_DB, verify_artifact
from nrp_deploy.cli import main
from nrp_deploy.errors import FidelityError
from nrp_deploy.export.fidelity import measure_fidelity
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.images import write_png
from nrp_deploy.models import ModelSpec
from nrp_deploy.runtime import load_purifier

SPEC = ModelSpec("NRP", {"nf": 16, "nb": 1, "gc": 16})
LOUDNESS = 1e4
INT8_FLOOR_DB = DEFAULT_MIN_PSNR_DB["int8"]


def _outlier_channel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with trunk channel 0 made ``LOUDNESS`` times louder and read ``LOUDNESS`` times softer."""
    with torch.no_grad():
        module.conv_first.weight[0] *= LOUDNESS
        module.conv_first.bias[0] *= LOUDNESS
        for name, conv in module.named_modules():
            if isinstance(conv, torch.nn.Conv2d) and name != "conv_first":
                conv.weight[:, 0] /= LOUDNESS
    return module


@pytest.fixture(scope="module")
def outlier(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    loud = _outlier_channel(SPEC.build().eval())
    path = tmp_path_factory.mktemp("outlier") / "outlier.pth"
    torch.save(loud.state_dict(), path)
    return loud, path


def test_the_outlier_channel_leaves_the_fp32_function_unchanged():
    torch.manual_seed(0)
    plain = SPEC.build().eval()
    torch.manual_seed(0)
    loud = _outlier_channel(SPEC.build().eval())
    x = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        assert torch.allclose(loud(x), plain(x), atol=1e-2)  # float32 rounding of the loud channel
        assert loud.conv_first(x)[:, 0].abs().max() > 100 * plain.conv_first(x)[:, 0].abs().max()


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((2, 3, 24, 24), dtype=np.float32)


def test_an_int8_export_far_from_fp32_fails_its_check_and_is_refused(outlier, tmp_path, capsys):
    module, checkpoint = outlier
    photos = tmp_path / "photos"
    rng = np.random.default_rng(1)
    for k in range(5):
        write_png(photos / f"p{k}.png", rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
    int8 = tmp_path / "outlier-int8.onnx"
    export = [
        "export",
        "int8",
        "--model",
        str(checkpoint),
        "-o",
        str(int8),
        "--method",
        "ort",
        "--no-progress",
    ]
    calibration = ["--calibration", str(photos), "--crop-size", "24", "--count", "4"]
    assert main([*export, *calibration]) == 1  # written, with its FAIL verdict: exit status 1
    metadata = verify_artifact(int8)
    assert not metadata.verdict.passed and metadata.verdict.line.startswith("FAIL int8")
    assert metadata.fidelity.psnr_db < INT8_FLOOR_DB
    # The recorded verdict agrees with an independent measurement on images the export never saw.
    assert measure_fidelity(int8, module, _images(2)).psnr_db < INT8_FLOOR_DB
    with pytest.raises(FidelityError, match=r"FAIL int8 outlier-int8.onnx.*--allow-failed"):
        load_purifier(int8, backend="onnxruntime", threads=1)
    image = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with load_purifier(int8, backend="onnxruntime", threads=1, allow_failed=True) as purifier:
        assert purifier(image).shape == image.shape
    write_png(tmp_path / "in" / "x.png", image)
    purify = [
        "purify",
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "out"),
        "--model",
        str(int8),
        "--no-progress",
    ]
    capsys.readouterr()
    assert main(purify) == 2
    assert "failed its fidelity check" in capsys.readouterr().err
    assert not (tmp_path / "out" / "x.png").exists()
    assert main([*purify, "--allow-failed"]) == 0
    assert (tmp_path / "out" / "x.png").is_file()


def test_an_int8_artifact_exported_on_demand_that_fails_is_refused_then_and_from_the_cache(outlier):
    module, checkpoint = outlier
    with pytest.raises(FidelityError, match="FAIL int8"):
        load_purifier(checkpoint, backend="onnxruntime", precision="int8", threads=1)
    (cached,) = cache_dir().glob(f"{sha256_file(checkpoint)[:16]}-int8-*.onnx")
    metadata = verify_artifact(cached)
    assert not metadata.verdict.passed and metadata.fidelity.psnr_db < INT8_FLOOR_DB
    assert measure_fidelity(cached, module, _images(4)).psnr_db < INT8_FLOOR_DB
    exported_at = cached.stat().st_mtime_ns
    with pytest.raises(FidelityError, match="failed its fidelity check"):
        load_purifier(checkpoint, backend="onnxruntime", precision="int8", threads=1)
    image = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with load_purifier(
        checkpoint, backend="onnxruntime", precision="int8", threads=1, allow_failed=True
    ) as p:
        assert p(image).shape == image.shape
    assert cached.stat().st_mtime_ns == exported_at  # the cached artifact was judged, not exported again
