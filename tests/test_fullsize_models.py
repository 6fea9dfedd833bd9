"""The full-size published architectures (NRP: 23 RRDB blocks, 16.6 M parameters; NRP_resG: 23 residual
blocks) with random weights, through ONNX export and the runtime at a small resolution.

Every other test uses a block or two; these catch what only depth shows (graph size in the exporter and
the runtime, float error accumulated over 23 blocks). The architectures and their
settings come from the registry manifest, so they follow what is published. The NRP export takes about a
minute on one core, hence ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nrp_deploy.artifacts.metadata import verify_artifact
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.models.registry import load_manifest
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import load_purifier

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["NRP", "NRP_resG"])
def test_published_architecture_at_full_size_exports_and_runs(name, tmp_path):
    entry = load_manifest()[name]
    assert entry.config["nb"] == 23 and entry.config["nf"] == 64
    spec = ModelSpec(entry.architecture, dict(entry.config))
    torch.manual_seed(0)
    module = spec.build().eval()
    checkpoint = tmp_path / f"{name}.pth"
    torch.save(module.state_dict(), checkpoint)
    result = export_onnx(checkpoint, tmp_path / f"{name}.onnx", simplify=False, check_shapes=[(1, 3, 24, 24)])
    assert result.verdict.passed, result.verdict.line
    assert verify_artifact(result.path).model == spec.to_dict()
    images = np.random.default_rng(1).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        expected = (module(x).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
    with load_purifier(result.path, threads=1) as purifier:
        assert purifier.spec == spec
        out = purifier(images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.int16) - expected.astype(np.int16)).max() <= 1
