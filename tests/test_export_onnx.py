"""FP32 ONNX export: dynamic shapes, checker, equality with torch, metadata, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from nrp_deploy.artifacts.metadata import verify_artifact
from nrp_deploy.cli import main
from nrp_deploy.errors import CheckpointError, ExportError
from nrp_deploy.export.fidelity import cpu_session, run_session
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.models import ModelSpec

TINY = {
    "NRP": ModelSpec("NRP", {"nf": 16, "nb": 1, "gc": 8}),
    "NRP_resG": ModelSpec("NRP_resG", {"nf": 16, "nb": 2}),
}
# Three shapes the export never saw: batch > 1, odd and unequal sides.
SHAPES = ((1, 3, 32, 32), (2, 3, 45, 37), (3, 3, 19, 50))


@pytest.fixture(scope="module", params=sorted(TINY))
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    module = TINY[request.param].build().eval()
    folder = tmp_path_factory.mktemp(request.param)
    checkpoint = folder / "tiny.pth"
    torch.save(module.state_dict(), checkpoint)
    result = export_onnx(checkpoint, folder / "tiny.onnx")
    return module, checkpoint, result


def test_onnx_matches_torch_at_new_shapes(exported):
    module, _, result = exported
    session = cpu_session(result.path)
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x = rng.random(shape, dtype=np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        actual = run_session(session, x)
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() < 1e-4, shape


def test_graph_interface_and_checker(exported):
    _, _, result = exported
    model = onnx.load(result.path)
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_metadata_fields(exported):
    _, checkpoint, result = exported
    meta = verify_artifact(result.path)
    assert result.metadata_path == result.path.with_name("tiny.onnx.json")
    assert meta == result.metadata
    assert meta.precision == "fp32" and meta.io_dtype == "float32" and meta.opset == 20
    assert meta.source["sha256"] == sha256_file(checkpoint)
    assert meta.source["path"] == str(checkpoint.resolve())
    assert meta.model == ModelSpec(meta.model["architecture"], meta.model["config"]).to_dict()
    assert set(meta.tools) >= {"torch", "onnx", "onnxruntime", "onnxslim", "nvidia-modelopt"}
    assert meta.tools["onnx"] == onnx.__version__
    assert meta.fidelity.max_abs < 1e-4 and meta.fidelity.psnr_db > 80
    assert meta.verdict.passed and meta.verdict.line.startswith("PASS fp32 tiny.onnx")
    assert len(meta.fidelity_images["shapes"]) == 3
    assert json.loads(result.metadata_path.read_text())["artifact_sha256"] == sha256_file(result.path)


def test_existing_output_is_kept(exported, tmp_path):
    _, checkpoint, result = exported
    before = result.path.read_bytes()
    with pytest.raises(ExportError, match="exists; pass overwrite=True"):
        export_onnx(checkpoint, result.path)
    assert result.path.read_bytes() == before
    with pytest.raises(ExportError, match=r"should end in \.onnx"):
        export_onnx(checkpoint, tmp_path / "model.bin")


def test_bad_checkpoints_are_named(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        export_onnx(garbage, tmp_path / "out.onnx")
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(CheckpointError, match="not an NRP checkpoint"):
        export_onnx(foreign, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_cli_reports_bad_checkpoint(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"nope")
    assert main(["export", "onnx", "--model", str(garbage), "-o", str(tmp_path / "o.onnx")]) == 2
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line.startswith("nrp export: error: cannot read checkpoint") and "garbage.pth" in first_line
