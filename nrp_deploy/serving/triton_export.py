"""``nrp export triton``: a Triton model repository that any Triton (NGC's container, Kubernetes) loads.

Four models, the same interface as ``nrp serve`` (model ``nrp_purifier``, uint8 ``images`` in, uint8
``purified`` out, request parameters ``dynamic`` / ``seed`` / ``start_index``):

- ``nrp_preprocess`` (Python backend): uint8 NHWC -> float NCHW, the dynamic defence's Philox noise;
- ``nrp_model``: the purifier network, ONNX on the ``onnxruntime`` backend, a TensorRT plan on the
  ``tensorrt`` backend, or (``engine="python"``) ONNX Runtime inside a Python-backend model, for servers that
  have only the Python backend (the one nvidia-pytriton bundles); dynamic batching, instance groups, warm-up;
- ``nrp_postprocess`` (Python backend): float NCHW -> uint8 NHWC;
- ``nrp_purifier``: the ensemble of the three.

The Python-backend models are self-contained: the few torch-free modules they use (the Philox noise, the
uint8 <-> float conversions, the request checks) are copied beside them, so the server needs only numpy
(and onnxruntime for the ``python`` engine), never nrp_deploy. The repository is written to a temporary
folder and renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nrp_deploy.artifacts.sources import identify
from nrp_deploy.artifacts.specs import make_profile
from nrp_deploy.errors import ExportError, InputError
from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA
from nrp_deploy.runtime import prepost
from nrp_deploy.runtime.dynamic import check_noise_level
from nrp_deploy.runtime.on_demand import onnx_for
from nrp_deploy.runtime.purifier import DEFAULT_MAX_PIXELS
from nrp_deploy.serving import protocol
from nrp_deploy.serving.model_config import Batching, TensorSpec, model_config
from nrp_deploy.tensorrt.builder import build_engine
from nrp_deploy.tensorrt.engine import BuildOptions

ENGINES = ("onnxruntime", "tensorrt", "python")
PACKAGE = Path(__file__).resolve().parents[1]
#: Modules the Python-backend models import, copied as nrp_<name>.py with their error import made local.
VENDORED = {
    "nrp_philox.py": PACKAGE / "kernels" / "philox.py",
    "nrp_protocol.py": PACKAGE / "serving" / "protocol.py",
}
ERRORS_IMPORT = "from nrp_deploy.errors import InputError\n"
ERRORS_MODULE = (
    '"""The error the copied nrp_deploy modules raise."""\n\n\nclass InputError(ValueError):\n    pass\n'
)
MODELS = Path(__file__).parent / "triton_models"
NETWORK_INPUT, NETWORK_OUTPUT = "input", "output"  # the ONNX export's tensor names
WARMUP_SIDE = 64
#: The NGC Triton release the repository is written for: 24.10 is Triton 2.51, the server nvidia-pytriton 0.7
#: bundles, which the tests load the repository in. deploy/kubernetes runs the same image.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


@dataclass(frozen=True)
class TritonExportOptions:
    """How the repository serves: the network's engine, batching, instances, the defence's default and its
    noise level (``noise_sigma``, ``noise_eps``: written into the repository, so requests cannot change it)."""

    precision: str = "fp32"
    engine: str = "onnxruntime"
    max_batch: int = 8
    delay_us: int = 100
    instances: int = 1
    gpu: bool = False
    dynamic: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: int | None = None
    noise_sigma: float = PUBLISHED_SIGMA
    noise_eps: float = PUBLISHED_EPS

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        for name in ("max_batch", "instances", "max_pixels"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.delay_us < 0:
            raise InputError(f"delay_us must be >= 0, got {self.delay_us}")
        for name in ("noise_sigma", "noise_eps"):
            check_noise_level(name, getattr(self, name))


def export_triton_repository(
    model: str, output: str | Path, options: TritonExportOptions | None = None, overwrite: bool = False
) -> Path:
    """Write the repository for ``model`` (registry name, checkpoint or ONNX) to ``output``; its path."""
    options = options or TritonExportOptions()
    target = Path(output)
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite to replace it")
    source = identify(model)
    int8_method = "modelopt" if options.engine == "tensorrt" or options.gpu else "ort"
    onnx = onnx_for(source, options.precision, int8_method=int8_method)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write(staging, onnx, options)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _network_dtype(onnx: Path) -> str:
    """float32 or float16: the ONNX input's element type (an FP16 export may keep float16 I/O)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("reading the ONNX's input type needs onnxruntime: pip install onnxruntime") from exc
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    kind = session.get_inputs()[0].type
    dtypes = {"tensor(float)": "float32", "tensor(float16)": "float16"}
    if kind not in dtypes:
        raise ExportError(f"{onnx}: input of type {kind}; a purifier ONNX takes float or float16")
    return dtypes[kind]


def _copy_python_model(source: Path, version_dir: Path, vendored: bool) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, version_dir / "model.py")
    if not vendored:
        return
    (version_dir / "nrp_errors.py").write_text(ERRORS_MODULE, encoding="utf-8")
    (version_dir / "nrp_prepost.py").write_text(_conversions_module(), encoding="utf-8")
    for name, module in VENDORED.items():
        text = module.read_text(encoding="utf-8")
        if text.count(ERRORS_IMPORT) != 1 or text.replace(ERRORS_IMPORT, "").count("nrp_deploy.") > 0:
            raise ExportError(f"{module} imports more of nrp_deploy than its error type: it cannot be copied")
        (version_dir / name).write_text(text.replace(ERRORS_IMPORT, "from nrp_errors import InputError\n"))


def _conversions_module() -> str:
    """``nrp_prepost.py``: the runtime's uint8 <-> float conversions, copied function by function (the rest
    of ``runtime.prepost`` reads PIL images and needs more of nrp_deploy)."""
    functions = (prepost.uint8_to_float, prepost.float_to_uint8)
    header = '"""The runtime\'s uint8 <-> float conversions."""\n\nimport numpy as np\n\n'
    scale = f"_SCALE = np.float32({float(prepost._SCALE)!r})\n\n\n"
    return header + scale + "\n\n".join(inspect.getsource(f) for f in functions) + "\n"


def _write(root: Path, onnx: Path, options: TritonExportOptions) -> None:
    dtype = _network_dtype(onnx)
    batching = Batching(options.max_batch, None)
    images = TensorSpec(protocol.INPUT, "uint8", (-1, -1, 3))
    purified = TensorSpec(protocol.OUTPUT, "uint8", (-1, -1, 3))
    net_in = TensorSpec(NETWORK_INPUT, dtype, (3, -1, -1))
    net_out = TensorSpec(NETWORK_OUTPUT, dtype, (3, -1, -1))
    gpu = options.gpu or options.engine == "tensorrt"
    settings = {
        "dynamic": options.dynamic,
        "sigma": options.noise_sigma,
        "eps": options.noise_eps,
        "max_pixels": options.max_pixels,
        "threads": options.threads,
    }
    python_model = {"backend": "python", "parameters": {"nrp_settings": json.dumps(settings)}}

    for name, source, model_in, model_out in (
        ("nrp_preprocess", "preprocess.py", images, net_in),
        ("nrp_postprocess", "postprocess.py", net_out, purified),
    ):
        _copy_python_model(MODELS / source, root / name / "1", vendored=True)
        text = model_config(
            name, inputs=[model_in], outputs=[model_out], batching=batching, instances=options.instances,
            **python_model,
        )  # fmt: skip
        (root / name / "config.pbtxt").write_text(text, encoding="utf-8")

    net = root / "nrp_model"
    (net / "1").mkdir(parents=True)
    kind: dict = {}
    if options.engine == "onnxruntime":
        shutil.copyfile(onnx, net / "1" / "model.onnx")
        kind = {"backend": "onnxruntime"}
    elif options.engine == "python":
        shutil.copyfile(onnx, net / "1" / "model.onnx")
        _copy_python_model(MODELS / "onnx_purifier.py", net / "1", vendored=False)
        kind = python_model
    else:
        _build_plan(onnx, net / "1" / "model.plan", options.max_batch)
        kind = {"backend": "tensorrt"}
    text = model_config(
        "nrp_model", inputs=[net_in], outputs=[net_out], batching=Batching(options.max_batch, options.delay_us),
        instances=options.instances, gpu=gpu,
        warmup=[("zeros", TensorSpec(NETWORK_INPUT, dtype, (3, WARMUP_SIDE, WARMUP_SIDE)))], **kind,
    )  # fmt: skip
    (net / "config.pbtxt").write_text(text, encoding="utf-8")

    ensemble = root / protocol.MODEL_NAME
    (ensemble / "1").mkdir(parents=True)
    text = model_config(
        protocol.MODEL_NAME, platform="ensemble", inputs=[images], outputs=[purified], batching=batching,
        ensemble_steps=[
            ("nrp_preprocess", {protocol.INPUT: protocol.INPUT}, {NETWORK_INPUT: "network_input"}),
            ("nrp_model", {NETWORK_INPUT: "network_input"}, {NETWORK_OUTPUT: "network_output"}),
            ("nrp_postprocess", {NETWORK_OUTPUT: "network_output"}, {protocol.OUTPUT: protocol.OUTPUT}),
        ],
    )  # fmt: skip
    (ensemble / "config.pbtxt").write_text(text, encoding="utf-8")
    (root / "README.md").write_text(_readme(options, onnx, dtype), encoding="utf-8")


def _build_plan(onnx: Path, plan: Path, max_batch: int) -> None:
    """A TensorRT plan for this GPU and TensorRT release (the Triton that loads it must match both)."""
    profile = make_profile((1, 32, 32), (1, 224, 224), (max_batch, 448, 448))
    build_engine(onnx, plan, BuildOptions(profile=profile), overwrite=True)


def _readme(options: TritonExportOptions, onnx: Path, dtype: str) -> str:
    network = {
        "onnxruntime": "`model.onnx` on Triton's onnxruntime backend",
        "tensorrt": "`model.plan`, a TensorRT engine: it runs only under the TensorRT release and on the GPU "
        "kind it was built with, so use the Triton release that ships that TensorRT, on that GPU",
        "python": "`model.onnx` run by ONNX Runtime inside a Python-backend model (`pip install onnxruntime` "
        "in the server's Python): for servers with only the Python backend",
    }[options.engine]
    return f"""# NRP purifier: Triton model repository

Exported by nrp-deploy from `{onnx.name}` ({options.precision}, network tensors {dtype}).

| model | what |
| --- | --- |
| `nrp_purifier` | the ensemble to call: uint8 `images` [N, H, W, 3] in, uint8 `purified` [N, H, W, 3] out |
| `nrp_preprocess` | Python backend: uint8 -> float NCHW in [0, 1], the dynamic defence's noise |
| `nrp_model` | the purifier network: {network}; max batch {options.max_batch}, dynamic batching ({options.delay_us} us), {options.instances} instance(s) per {"GPU" if options.gpu or options.engine == "tensorrt" else "CPU"} |
| `nrp_postprocess` | Python backend: float NCHW -> uint8 NHWC |

Request parameters: `dynamic` (true/false; default {str(options.dynamic).lower()}), `seed` (0 <= seed < 2**64;
none: a fresh seed per request), `start_index` (noise index of the request's first image). The dynamic
defence's noise level was fixed at export: sigma {options.noise_sigma:g}, eps {options.noise_eps:.4g}
(`nrp_preprocess`'s `nrp_settings`; export again to change it). The Python-backend models need numpy (in
every NGC Triton container) and nothing from nrp-deploy.

Serve it with the NGC container (pick the release whose Triton matches your drivers):

```bash
docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD":/models \\
  {TRITON_IMAGE} tritonserver --model-repository=/models
```

or with any `tritonserver` binary: `tritonserver --model-repository=/path/to/this/folder`. Then, from Python,
`nrp_deploy.serving.PurifierClient("http://HOST:8000").purify(images)`, or `nrp purify --server URL`.
"""
