"""Calibration, activation ranges, FP16 (AutoCast) and INT8 (ModelOpt / ONNX Runtime) export on tiny models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nrp_deploy.artifacts.metadata import verify_artifact
from nrp_deploy.artifacts.sources import identify
from nrp_deploy.assets import examples_dir
from nrp_deploy.cli import main
from nrp_deploy.cpu_features import host_isa, int8_target_mismatch, parse_cpuinfo, resolve_int8_target
from nrp_deploy.errors import ExportError, InputError
from nrp_deploy.export.calibration import (
    DEFAULT_FOLDER,
    calibration_and_holdout,
    load_pictures,
    random_crops,
)
from nrp_deploy.export.fidelity import compare, cpu_session, measure_fidelity, run_session
from nrp_deploy.export.fp16 import export_fp16, fp32_nodes_in, select_fp32_nodes
from nrp_deploy.export.int8 import export_int8
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.export.ranges import collect_absmax
from nrp_deploy.images import write_png
from nrp_deploy.models import ModelSpec

# Every conv has >= 16 channels on one side (a multiple of 8), so ModelOpt quantises all of them.
SPEC = ModelSpec("NRP", {"nf": 16, "nb": 1, "gc": 16})
CROP = 24
SMALL = {"crop_size": CROP, "count": 4, "holdout_count": 2, "progress": False}


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 image: a few random low-frequency waves per channel."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        wave = sum(
            np.sin(2 * np.pi * (rng.uniform(0.3, 2.0) * xx + rng.uniform(0.3, 2.0) * yy) + rng.uniform(0, 6))
            for _ in range(3)
        )
        channels.append((wave - wave.min()) / (np.ptp(wave) + 1e-9))
    return np.rint(np.stack(channels, axis=2) * 255).astype(np.uint8)


def smooth_batch(seed: int, count: int, height: int, width: int) -> np.ndarray:
    """Float32 NCHW in [0, 1] of ``smooth_image``s, as the purifier takes them."""
    rng = np.random.default_rng(seed)
    images = [smooth_image(rng, height, width).transpose(2, 0, 1) for _ in range(count)]
    return (np.stack(images) / np.float32(255)).astype(np.float32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):  # 4 for calibration, the 4th held out -> 4 calibration + 1 held-out picture
        write_png(folder / f"p{i}.png", smooth_image(rng, 40 + i, 36 + 2 * i))
    return folder


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    module = SPEC.build().eval()
    folder = tmp_path_factory.mktemp("fp32")
    torch.save(module.state_dict(), folder / "tiny.pth")
    return module, export_onnx(folder / "tiny.pth", folder / "tiny.onnx").path


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    """A purifier whose trunk runs at ~1e5 (past FP16's 65504) yet outputs O(1) values."""
    torch.manual_seed(0)
    module = SPEC.build().eval()
    with torch.no_grad():
        module.conv_first.weight.mul_(1e5)
        module.conv_first.bias.mul_(1e5)
        module.trunk_conv.weight.mul_(1e-5)
    folder = tmp_path_factory.mktemp("loud")
    torch.save(module.state_dict(), folder / "loud.pth")
    return module, export_onnx(folder / "loud.pth", folder / "loud.onnx").path


# --- calibration images -------------------------------------------------------------------------------


def test_the_fp32_reference_of_fidelity_runs_without_tf32(tf32_switches):
    """Fidelity is measured against true FP32: on a GPU torch would run the reference's convolutions in
    TF32 by default."""
    seen = []

    class Reference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(tf32_switches())
            return x * self.scale

    class Session:
        def get_inputs(self):
            return [type("Arg", (), {"name": "input", "type": "tensor(float)"})()]

        def run(self, names, feeds):
            return [feeds["input"]]

    tf32_switches(True)
    (stats,) = compare(Session(), Reference(), np.full((1, 3, 4, 4), 0.5, np.float32))
    assert seen == [(False, False)] and tf32_switches() == (True, True)
    assert stats.count == 48 and stats.max_abs == 0.0


def test_calibration_split_and_crops(photos):
    calib, held = calibration_and_holdout(photos, crop_size=CROP, count=6, holdout_count=2, seed=3)
    assert calib.batch.shape == (6, 3, CROP, CROP) and calib.batch.dtype == np.float32
    assert calib.batch.min() >= 0.0 and calib.batch.max() <= 1.0
    assert set(calib.pictures) == {"p0.png", "p1.png", "p2.png", "p4.png"}
    assert held.pictures == ("p3.png",) and held.batch.shape == (2, 3, CROP, CROP)
    again, _ = calibration_and_holdout(photos, crop_size=CROP, count=6, holdout_count=2, seed=3)
    assert np.array_equal(calib.batch, again.batch)
    other, _ = calibration_and_holdout(photos, crop_size=CROP, count=6, holdout_count=2, seed=4)
    assert not np.array_equal(calib.batch, other.batch)


def test_no_more_crops_than_positions():
    pictures = load_pictures(np.full((2, 3, 8, 8), 0.5, dtype=np.float32))
    assert random_crops(pictures, crop_size=8, count=5, seed=0).batch.shape[0] == 2


def test_default_calibration_folder_is_the_example_photos():
    pictures = load_pictures(None)
    assert examples_dir() == DEFAULT_FOLDER and len(pictures) >= 2
    assert all(p.chw.shape[0] == 3 and p.chw.dtype == np.float32 for p in pictures)


def test_bad_calibration_sources(tmp_path, photos):
    with pytest.raises(ExportError, match="holds no images"):
        load_pictures(tmp_path)
    with pytest.raises(ExportError, match=r"neither a folder of images nor an \.npz"):
        load_pictures(tmp_path / "missing")
    single = tmp_path / "single"
    write_png(single / "only.png", smooth_image(np.random.default_rng(1), 30, 30))
    with pytest.raises(ExportError, match="at least 2 calibration images"):
        calibration_and_holdout(single, crop_size=16)
    with pytest.raises(ExportError, match="smaller than the crop size 64"):
        calibration_and_holdout(photos, crop_size=64)
    with pytest.raises(ExportError, match=r"values must be finite and in \[0, 1\]"):
        load_pictures(np.full((2, 3, 8, 8), 255.0, dtype=np.float32))


# --- activation ranges --------------------------------------------------------------------------------


def test_streamed_ranges_equal_whole_graph_ranges(fp32):
    _, path = fp32
    model = onnx.load(path)
    crops = [np.random.default_rng(i).random((1, 3, 20, 28), dtype=np.float32) for i in range(3)]
    segmented = collect_absmax(model, crops, segment_nodes=5, progress=False)
    whole = collect_absmax(model, crops, segment_nodes=10_000, progress=False)
    # Reference: one plain session with every node output exposed as a graph output.
    exposed = onnx.load(path)
    names = [o for n in exposed.graph.node for o in n.output]
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = cpu_session(exposed.SerializeToString())
    reference: dict[str, float] = {}
    for x in crops:
        for name, value in zip(
            [o.name for o in session.get_outputs()], session.run(None, {"input": x}), strict=True
        ):
            reference[name] = max(reference.get(name, 0.0), float(np.abs(value).max()))
    assert set(names) <= set(segmented)
    for name in names:
        assert segmented[name] == whole[name] == pytest.approx(reference[name], rel=1e-6)


_RANGE_MEMORY_PROBE = """
import os
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from nrp_deploy.export.ranges import collect_ranges

chain = [helper.make_node("Mul", ["input" if i == 0 else f"t{i - 1}", "k"], [f"t{i}"]) for i in range(64)]
graph = helper.make_graph(
    chain, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, None, None])],
    [helper.make_tensor_value_info("t63", TensorProto.FLOAT, None)],
    [numpy_helper.from_array(np.array(1.01, np.float32), "k")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
x = np.random.default_rng(0).random((1, 8, 512, 512), dtype=np.float32)  # 8 MiB per tensor
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
ranges = collect_ranges(model, [x, x], segment_nodes=8, progress=False)
assert len(ranges) == 65
# VmHWM, not ru_maxrss: after fork + exec, Linux reports the parent's (pytest's) peak in ru_maxrss too
peak_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print((peak_kib * 1024 - before) / 2**20)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux /proc for memory")
def test_streamed_ranges_hold_one_segment_not_the_graph():
    """64 tensors of 8 MiB in 8 segments: the pass holds about one segment's tensors (64 MiB), not all
    512 MiB (each ONNX Runtime session's arena would keep its segment's peak after running)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed buffers go back to the system at once
    result = subprocess.run(
        [sys.executable, "-c", _RANGE_MEMORY_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    growth_mib = float(result.stdout.strip())
    assert growth_mib < 256, f"peak memory grew by {growth_mib:.0f} MiB"


def test_streamed_minmax_quantises_like_onnxruntimes_own_calibration(fp32, tmp_path):
    """The streamed (min, max) pass handed to quantize_static as its cache gives the model ONNX Runtime's
    own MinMax calibration gives: same graph, same scales, zero points and weights."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from nrp_deploy.export.ort_quant import _CropReader, image_convolutions, quantize_ort_qdq

    _, path = fp32
    crops = smooth_batch(3, 4, CROP, CROP)
    ours = tmp_path / "ours.onnx"
    quantize_ort_qdq(path, ours, crops, "minmax", progress=False)
    assert (tmp_path / "ours.ranges.json").is_file()  # the calibration ran as our streamed pass
    reference = tmp_path / "reference.onnx"
    quantize_static(
        str(tmp_path / "ours.pre.onnx"),
        str(reference),
        _CropReader(crops, "input", progress=False),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=image_convolutions(onnx.load(tmp_path / "ours.pre.onnx")),
    )
    a, b = onnx.load(ours), onnx.load(reference)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    ref_inits = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    ours_inits = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    assert ours_inits.keys() == ref_inits.keys()
    for name, value in ours_inits.items():
        np.testing.assert_allclose(value, ref_inits[name], rtol=1e-6, atol=0, err_msg=name)


def test_fp32_node_choice_matches_autocasts_own(loud, tmp_path):
    """Our streamed ranges + AutoCast's rule pick the nodes AutoCast picks from its own reference run."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    _, path = loud
    crops = smooth_batch(7, 3, CROP, CROP)
    np.savez(tmp_path / "calib.npz", input=crops)
    theirs = convert_to_mixed_precision(
        str(path), keep_io_types=True, calibration_data=str(tmp_path / "calib.npz"), providers=["cpu"]
    )
    model = onnx.load(path)
    absmax = collect_absmax(model, [crops[i : i + 1] for i in range(3)], progress=False)
    ours = select_fp32_nodes(model, absmax, data_max=512.0)
    assert ours, "the loud model should exceed FP16's safe range somewhere"
    assert set(fp32_nodes_in(theirs)) == set(ours)


# --- FP16 ---------------------------------------------------------------------------------------------


def test_fp16_runs_on_cpu_within_threshold(fp32, photos, tmp_path):
    module, path = fp32
    result = export_fp16(path, tmp_path / "fp16.onnx", photos, **SMALL)
    meta = verify_artifact(result.path)
    assert meta.precision == "fp16" and meta.io_dtype == "float32"
    assert meta.verdict.passed and meta.fidelity.psnr_db >= 50.0
    assert meta.derived_from["sha256"] == verify_artifact(path).artifact_sha256
    calibration = meta.calibration
    assert calibration["crop_size"] == CROP and calibration["count"] == 4
    assert "p3.png" not in calibration["images"] and meta.fidelity_images["images"] == ["p3.png"]
    assert calibration["nodes_fp32"] == [] and calibration["nodes_fp16"] == calibration["nodes_total"] > 0
    model = onnx.load(result.path)
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dtypes = {t.data_type for t in model.graph.initializer if t.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    # Independent check on images neither calibration nor the export's own check saw.
    assert measure_fidelity(result.path, module, smooth_batch(11, 2, 30, 26)).psnr_db >= 50.0


def test_fp16_io_option(fp32, photos, tmp_path):
    _, path = fp32
    result = export_fp16(path, tmp_path / "fp16io.onnx", photos, keep_io_types=False, **SMALL)
    model = onnx.load(result.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert result.metadata.io_dtype == "float16" and result.verdict.passed
    out = run_session(cpu_session(result.path), np.full((1, 3, 17, 23), 0.5, dtype=np.float32))
    assert out.shape == (1, 3, 17, 23) and np.isfinite(out).all()


def test_fp16_keeps_overflowing_nodes_in_fp32(loud, photos, tmp_path):
    _, path = loud
    result = export_fp16(path, tmp_path / "loud16.onnx", photos, **SMALL)
    kept = result.metadata.calibration["nodes_fp32"]
    assert kept and set(kept) >= set(result.metadata.calibration["nodes_fp32_by_range"])
    assert all(v > 512.0 for v in result.metadata.calibration["nodes_fp32_by_range"].values())
    assert result.verdict.passed, result.verdict.line
    # Without the range rule everything becomes FP16, the trunk overflows, and the verdict says so.
    naive = export_fp16(path, tmp_path / "naive16.onnx", photos, data_max=float("inf"), **SMALL)
    assert naive.metadata.calibration["nodes_fp32"] == [] and naive.metadata.calibration["data_max"] is None
    assert not naive.verdict.passed and naive.verdict.line.startswith("FAIL fp16")


# --- INT8 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["modelopt", "ort"])
def test_int8_has_qdq_on_every_conv_and_runs(fp32, photos, tmp_path, method):
    _, path = fp32
    result = export_int8(path, tmp_path / f"{method}.onnx", method, photos, **SMALL)
    model = onnx.load(result.path)
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 17
    # ONNX Runtime's CPU INT8 keeps the two convolutions at the image's ends in FP32 (ort_quant explains):
    # their weights stay float (the last one's input is still the quantised output of the layer before)
    image_ends = {convs[0].name, convs[-1].name} if method == "ort" else set()
    for conv in convs:
        quantized = conv.name not in image_ends
        assert (producer.get(conv.input[1]) == "DequantizeLinear") == quantized, conv.name
        if quantized:
            assert producer.get(conv.input[0]) == "DequantizeLinear", conv.name
    assert producer.get(convs[0].input[0]) != "DequantizeLinear" or method != "ort"  # the image, unrounded
    meta = verify_artifact(result.path)
    assert meta.precision == "int8" and meta.calibration["method"] == method
    assert meta.calibration["conv_nodes"] == 17
    assert meta.calibration["quantized_convs"] == 17 - len(image_ends)
    assert meta.calibration["float_convs"] == sorted(image_ends)
    assert meta.verdict.passed and meta.fidelity.psnr_db >= 35.0
    out = run_session(cpu_session(result.path), np.full((2, 3, 21, 19), 0.25, dtype=np.float32))
    assert out.shape == (2, 3, 21, 19) and np.isfinite(out).all()


def _int8_weights(model: onnx.ModelProto) -> np.ndarray:
    """Every int8 initializer (the quantised weights) flattened into one array."""
    tensors = [
        onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
    ]
    return np.concatenate([t.ravel() for t in tensors])


@pytest.mark.parametrize("target", ["any", "vnni"])
def test_ort_int8_target_cpu_bounds_weights(fp32, photos, tmp_path, target, caplog):
    _, path = fp32
    result = export_int8(path, tmp_path / f"{target}.onnx", "ort", photos, target_cpu=target, **SMALL)
    weights = _int8_weights(onnx.load(result.path)).astype(np.int32)
    meta = verify_artifact(result.path)
    assert meta.calibration["target_cpu"] == target
    assert meta.calibration["export_cpu"] == host_isa().to_dict()
    low, high = meta.calibration["weight_range"]
    assert low <= weights.min() and weights.max() <= high
    # The U8S8 kernels of CPUs without VNNI add two uint8 x int8 products in a saturating int16 lane.
    worst_pair = 2 * 255 * int(np.abs(weights).max())
    if target == "any":
        assert worst_pair <= np.iinfo(np.int16).max
    else:
        assert worst_pair > np.iinfo(np.int16).max  # full-range weights: exact only with VNNI
    if int8_target_mismatch(target) is None:
        assert meta.verdict.passed and meta.fidelity.psnr_db >= 35.0
    else:  # a VNNI artifact on a CPU that saturates: loading it says so
        with caplog.at_level("WARNING"):
            identify(result.path)
        assert "lacks VNNI" in caplog.text


def test_ort_int8_cache_is_portable_and_vnni_artifacts_warn(fp32, photos, tmp_path, monkeypatch, caplog):
    """The cache makes artifacts exact on every CPU, even on a VNNI machine; a VNNI artifact opened on a
    CPU without VNNI is named as such."""
    from nrp_deploy import cpu_features
    from nrp_deploy.runtime.on_demand import onnx_for

    module, path = fp32
    checkpoint = tmp_path / "tiny.pth"
    torch.save(module.state_dict(), checkpoint)
    zen4 = cpu_features.CpuIsa("x86_64", "Zen 4", frozenset({"avx2", "avx512f", "avx512_vnni"}))
    zen3 = cpu_features.CpuIsa("x86_64", "Zen 3", frozenset({"avx2", "fma"}))
    monkeypatch.setattr(cpu_features, "host_isa", lambda: zen4)
    source = identify(checkpoint)
    cached = onnx_for(source, "int8", int8_method="ort")
    assert "-int8-ort-any-" in cached.name and verify_artifact(cached).calibration["target_cpu"] == "any"
    assert onnx_for(source, "int8", int8_method="ort") == cached  # reused
    vnni = export_int8(path, tmp_path / "vnni.onnx", "ort", photos, target_cpu="vnni", **SMALL).path
    monkeypatch.setattr(cpu_features, "host_isa", lambda: zen3)
    with caplog.at_level("WARNING"):
        identify(cached)
    assert "VNNI" not in caplog.text
    with caplog.at_level("WARNING"):
        identify(vnni)
    assert "Zen 3" in caplog.text and "lacks VNNI" in caplog.text


def test_cpuinfo_parsing_and_int8_target():
    zen3 = cpu_features_of("fpu sse2 avx avx2 fma bmi2 sha_ni")
    zen4 = cpu_features_of("fpu avx2 fma avx512f avx512_bf16 avx512_vnni")
    assert zen3.flags == {"avx2", "fma"} and not zen3.vnni and zen3.u8s8_saturates
    assert zen4.vnni and not zen4.u8s8_saturates
    assert zen3.headline() == "AVX2 yes, AVX-512 no, VNNI no, BF16 no, AMX no"
    assert zen4.headline() == "AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX no"
    assert resolve_int8_target("auto", zen3) == "any" and resolve_int8_target("auto", zen4) == "vnni"
    assert resolve_int8_target("vnni", zen3) == "vnni"
    assert int8_target_mismatch("vnni", zen3) and int8_target_mismatch("vnni", zen4) is None
    assert int8_target_mismatch("any", zen3) is None and int8_target_mismatch(None, zen3) is None
    arm = parse_cpuinfo("processor : 0\nFeatures : fp asimd asimddp\nCPU part : 0xd42\n", "aarch64")
    assert not arm.u8s8_saturates and resolve_int8_target("auto", arm) == "vnni"
    unknown = parse_cpuinfo("", "x86_64")
    assert not unknown.known and unknown.u8s8_saturates  # unknown features: the safe choice
    with pytest.raises(InputError, match="one of auto, vnni, any"):
        resolve_int8_target("avx2")


def cpu_features_of(flags: str):
    return parse_cpuinfo(f"processor : 0\nmodel name : test cpu\nflags : {flags}\n", "x86_64")


def test_int8_rejects_unknown_options(fp32, tmp_path):
    _, path = fp32
    with pytest.raises(ExportError, match="method must be one of modelopt, ort"):
        export_int8(path, tmp_path / "x.onnx", method="tensorrt")
    with pytest.raises(ExportError, match="'percentile' is not one of entropy, max"):
        export_int8(path, tmp_path / "x.onnx", calibration_method="percentile")


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_fp16_prints_the_verdict(fp32, photos, tmp_path, capsys):
    _, path = fp32
    out = tmp_path / "cli16.onnx"
    argv = ["export", "fp16", "--model", str(path), "-o", str(out), "--calibration", str(photos)]
    argv += ["--crop-size", str(CROP), "--count", "3", "--holdout-count", "1", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert re.match(r"PASS fp16 cli16\.onnx: PSNR \d+\.\d dB >= 50\.0 dB", captured.out)
    assert out.with_name("cli16.onnx.json").is_file()
    assert main([*argv, "--min-psnr", "500"]) == 2  # exists, no --overwrite
    assert main([*argv, "--min-psnr", "500", "--overwrite"]) == 1  # FAIL verdict
    assert capsys.readouterr().out.startswith("FAIL fp16")


def test_cli_empty_calibration_folder(fp32, tmp_path, capsys):
    _, path = fp32
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [
        "export",
        "int8",
        "--model",
        str(path),
        "-o",
        str(tmp_path / "q.onnx"),
        "--calibration",
        str(empty),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nrp export: error: calibration folder {empty} holds no images (png, jpg, bmp, tif, webp)"
