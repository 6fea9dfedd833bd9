"""The GPU paths on a real device (marked ``gpu``: skipped where no CUDA device is present).

- ONNX Runtime's CUDA execution provider (the ``onnxruntime-gpu`` wheel; ``scripts/setup.sh --gpu``) fed
  by the fused kernels through I/O binding (``DevicePipeline``), FP32 and FP16, plain and in ONNX Runtime's
  CUDA-graph mode (host and device calls mixed on one captured session), and with the dynamic defence: all
  equal to the host path on the CPU provider.
- The native TensorRT backend, where TensorRT is installed: engine built, cached, run with CUDA graphs
  (captured once per binding and replayed with new data), through the Purifier and the fused path.
- The TensorRT backend's own machinery without TensorRT: a stand-in ``tensorrt`` whose engine launches a
  real fused kernel, so CUDA-graph capture and replay, events, pinned copies, context handling and capture
  while another thread runs the fused path are exercised on any GPU.
- Fidelity of the published architectures (random weights) through the fused path: FP16 >= 50 dB PSNR
  against FP32 torch (needs torch and the export tools; marked ``slow`` too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nrp_deploy.assets import examples_dir
from nrp_deploy.runtime import prepost
from nrp_deploy.runtime.backends.options import OrtOptions
from nrp_deploy.runtime.dynamic import DynamicDefense

pytestmark = pytest.mark.gpu

SEED = 1234


def _conv_net(path: Path, fp16: bool, fp16_io: bool = False) -> Path:
    """conv3x3(3->8) + ReLU + conv3x3(8->3), seeded weights; FP16 inside (and optionally at the I/O)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    dtype = np.float16 if fp16 else np.float32
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(dtype), "w1"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(dtype), "b1"),
        numpy_helper.from_array((rng.standard_normal((3, 8, 3, 3)) * 0.2).astype(dtype), "w2"),
        numpy_helper.from_array((rng.standard_normal(3) * 0.1 + 0.5).astype(dtype), "b2"),
    ]
    inner = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    io = TensorProto.FLOAT16 if fp16_io else TensorProto.FLOAT
    nodes = []
    x, y = "input", "output"
    if fp16 and not fp16_io:
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=inner))
        x, y = "x16", "y16"
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], [y], pads=[1, 1, 1, 1]),
    ]
    if fp16 and not fp16_io:
        nodes.append(helper.make_node("Cast", ["y16"], ["output"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("input", io, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", io, ["N", 3, "H", "W"])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _ort_cuda():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has no CUDA execution provider (install onnxruntime-gpu)")
    from nrp_deploy.runtime.backends.ort import OrtBackend

    return OrtBackend


def _host_reference(onnx: Path, images: np.ndarray, dynamic: DynamicDefense | None, seed: int) -> np.ndarray:
    """The host path on ONNX Runtime's CPU provider: what the fused GPU path must reproduce."""
    from nrp_deploy.runtime.backends.ort import OrtBackend

    backend = OrtBackend(onnx, device="cpu")
    backend.activate()
    x = prepost.uint8_to_float(images)
    if dynamic is not None:
        x = dynamic.apply(x, seed, 0)
    return prepost.float_to_uint8(backend.infer(x))


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _assert_close(got: np.ndarray, expected: np.ndarray, fp16: bool) -> None:
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= (2 if fp16 else 1)
    assert (diff == 0).mean() > (0.97 if fp16 else 0.995)


@pytest.mark.parametrize(("fp16", "fp16_io"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("dynamic", [None, DynamicDefense(seed=7)])
def test_ort_cuda_fused_path_matches_cpu(tmp_path, fp16, fp16_io, dynamic):
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    OrtBackend = _ort_cuda()
    onnx = _conv_net(tmp_path / "net.onnx", fp16, fp16_io)
    backend = OrtBackend(onnx, precision="fp16" if fp16 else "fp32", device="cuda:0")
    backend.activate()
    with DevicePipeline(backend) as pipeline:
        for call in range(2):
            images = _images(2, 24, 40, seed=call)
            got = pipeline(images, dynamic, seed=7)
            _assert_close(got, _host_reference(onnx, images, dynamic, 7), fp16)
    backend.deactivate()


def test_ort_cuda_graph_mode_through_the_fused_path(tmp_path):
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    OrtBackend = _ort_cuda()
    onnx = _conv_net(tmp_path / "net.onnx", fp16=True)
    backend = OrtBackend(
        onnx, precision="fp16", device="cuda:0", options=OrtOptions(cuda_graph=True, fixed_shape=(2, 32, 32))
    )
    backend.activate()
    with DevicePipeline(backend) as pipeline:
        for call in range(3):  # the first run captures, later ones replay with new data in the same buffers
            images = _images(2, 32, 32, seed=call)
            _assert_close(pipeline(images), _host_reference(onnx, images, None, 0), fp16=True)
    backend.deactivate()


def test_ort_cuda_graph_host_and_device_calls_share_the_captured_buffers(tmp_path):
    """The captured session replays its capture-time addresses: host calls (``infer``) and fused calls
    (``infer_device``) alternate, each with new data, and each must see its own result."""
    from nrp_deploy.runtime.backends.ort import OrtBackend as CpuBackend
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    OrtBackend = _ort_cuda()
    onnx = _conv_net(tmp_path / "net.onnx", fp16=False)
    backend = OrtBackend(onnx, device="cuda:0", options=OrtOptions(cuda_graph=True, fixed_shape=(2, 32, 32)))
    backend.activate()
    cpu = CpuBackend(onnx, device="cpu")
    cpu.activate()
    with DevicePipeline(backend) as pipeline:
        for call in range(6):
            images = _images(2, 32, 32, seed=call)
            if call % 2:
                _assert_close(pipeline(images), _host_reference(onnx, images, None, 0), fp16=False)
            else:
                x = prepost.uint8_to_float(images)
                np.testing.assert_allclose(backend.infer(x), cpu.infer(x), atol=1e-4)
    backend.deactivate()


# -- native TensorRT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engine_through_purifier_and_fused_path(tmp_path, fp16):
    pytest.importorskip("tensorrt")
    from nrp_deploy.artifacts.specs import make_profile
    from nrp_deploy.runtime import load_purifier
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    onnx = _conv_net(tmp_path / "net.onnx", fp16)
    options = {
        "profile": make_profile((1, 16, 16), (2, 32, 32), (4, 64, 64)),
        "cache_dir": tmp_path / "engines",
    }
    with load_purifier(onnx, backend="tensorrt", options=options) as purifier:
        backend = purifier.backend
        assert backend.precision == ("fp16" if fp16 else "fp32")
        images = _images(6, 80, 40)  # beyond the profile: tiled and split by the Purifier
        _assert_close(purifier(images), _host_reference(onnx, images, None, 0), fp16)
        with DevicePipeline(backend) as pipeline:
            dynamic = DynamicDefense(seed=3)
            for call in range(3):  # the graph of this shape is captured once, then replayed
                images = _images(2, 32, 32, seed=call)
                _assert_close(
                    pipeline(images, dynamic, seed=3), _host_reference(onnx, images, dynamic, 3), fp16
                )
    with load_purifier(onnx, backend="tensorrt", options=options) as again:
        assert again.backend.path == backend.path  # reused from the cache, not rebuilt
        assert again.backend.metadata.built_at == backend.metadata.built_at


def test_tensorrt_graph_replays_new_data_and_equals_plain_enqueues(tmp_path):
    pytest.importorskip("tensorrt")
    from nrp_deploy.runtime import load_purifier

    onnx = _conv_net(tmp_path / "net.onnx", fp16=False)
    inputs = [prepost.uint8_to_float(_images(2, 32, 32, seed=k)) for k in range(4)]
    outputs = {}
    for graph in (True, False):
        options = {"cuda_graph": graph, "cache_dir": tmp_path / "engines"}
        with load_purifier(onnx, backend="tensorrt", options=options) as purifier:
            backend = purifier.backend
            outputs[graph] = [backend.infer(x) for x in inputs]
            (binding,) = backend._bindings.values()  # one shape, one set of buffers: one binding
            if graph:
                # the first call enqueues once and captures; every later call replays
                assert binding.graph is not None and binding.replays == len(inputs) - 1
            else:
                assert binding.graph is None and binding.replays == 0
    for with_graph, plain in zip(outputs[True], outputs[False], strict=True):
        np.testing.assert_array_equal(with_graph, plain)
    assert not np.array_equal(outputs[True][-1], outputs[True][-2])  # the replays saw their new inputs


# -- fidelity of the published architectures through the fused path -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["NRP_resG", "NRP"])
def test_published_architectures_fp16_fidelity_on_the_fused_path(tmp_path, architecture):
    torch = pytest.importorskip("torch")
    pytest.importorskip("modelopt")
    from nrp_deploy.artifacts.metadata import psnr_db
    from nrp_deploy.export.fp16 import export_fp16
    from nrp_deploy.export.onnx import export_onnx
    from nrp_deploy.images import read_image
    from nrp_deploy.models.spec import ModelSpec
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    OrtBackend = _ort_cuda()
    torch.manual_seed(SEED)
    module = ModelSpec(architecture).build().eval()
    checkpoint = tmp_path / f"{architecture}.pth"
    torch.save(module.state_dict(), checkpoint)
    fp32 = export_onnx(str(checkpoint), tmp_path / "fp32.onnx").path
    fp16 = export_fp16(str(fp32), tmp_path / "fp16.onnx", progress=False).path

    examples = sorted(examples_dir().glob("*.png"))[:2]
    images = np.stack([read_image(p)[:96, :96] for p in examples])
    x = prepost.uint8_to_float(images)
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
    for onnx, precision, floor in ((fp32, "fp32", 80.0), (fp16, "fp16", 50.0)):
        backend = OrtBackend(onnx, precision=precision, device="cuda:0")
        backend.activate()
        y = backend.infer(x)
        psnr = psnr_db(float(np.mean((y.astype(np.float64) - reference) ** 2)))
        print(f"{architecture} {precision} ONNX Runtime CUDA vs FP32 torch: PSNR {psnr:.1f} dB")
        assert psnr >= floor
        with DevicePipeline(backend) as pipeline:
            _assert_close(pipeline(images), prepost.float_to_uint8(y), fp16=precision == "fp16")
        backend.deactivate()


def test_tensorrt_backend_machinery_over_a_stub_engine_running_a_real_kernel(tmp_path, monkeypatch):
    """No TensorRT needed: the stand-in engine clamps its input to [0, 1] with a real ``FusedKernels``
    launch (float32 NCHW in and out, no noise) on the stream it is given. Graphs are captured and replayed
    with new data; host calls of new shapes (captures) and fused-path calls run from several threads."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from test_tensorrt_emulated import _metadata, make_runtime_trt

    from nrp_deploy.kernels import FusedKernels, cuda_api
    from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference
    from nrp_deploy.runtime.backends.tensorrt import TensorRTBackend
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline
    from nrp_deploy.tensorrt import support

    kernels = FusedKernels(0)

    def clamp(stream, shape, src, dst):
        n, _, h, w = shape
        kernels.preprocess(src, dst, n, h, w, out_dtype="float32", stream=stream, src_dtype="float32")

    trt = make_runtime_trt(None, compute=clamp)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    support.import_tensorrt.cache_clear()
    support.tensorrt_logger.cache_clear()
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    backend = TensorRTBackend(engine, _metadata(engine, tmp_path / "m.onnx"))
    backend.activate()
    rng = np.random.default_rng(SEED)
    try:
        for _ in range(4):  # one binding: a warm-up enqueue and a capture, then three replays of new data
            x = rng.uniform(-0.5, 1.5, (2, 3, 16, 16)).astype(np.float32)
            np.testing.assert_array_equal(backend.infer(x), np.clip(x, 0, 1))
        (binding,) = backend._bindings.values()
        assert binding.graph is not None and binding.replays == 3 and trt.enqueues == 2
        assert int(cuda_api.check(cuda_api.init_driver().cuCtxGetCurrent(), "cuCtxGetCurrent")) == 0

        with DevicePipeline(backend, kernels) as pipeline:

            def fused(k: int) -> None:
                images = _images(2, 16, 24, seed=k)
                expected = postprocess_reference(preprocess_reference(images, "float32"))
                np.testing.assert_array_equal(pipeline(images), expected)

            def host(k: int) -> None:  # new shapes: each binding captures while the other threads run
                shape = (1 + k % 4, 3, 8 + 2 * k, 16)
                x = np.random.default_rng(k).uniform(-0.5, 1.5, shape).astype(np.float32)
                np.testing.assert_array_equal(backend.infer(x), np.clip(x, 0, 1))

            with ThreadPoolExecutor(4) as pool:
                calls = [pool.submit(fused if k % 2 else host, k) for k in range(12)]
                for call in calls:
                    call.result()
    finally:
        backend.deactivate()
        kernels.close()
        support.import_tensorrt.cache_clear()
        support.tensorrt_logger.cache_clear()
