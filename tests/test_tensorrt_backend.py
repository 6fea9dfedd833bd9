"""The TensorRT builder and backend around TensorRT itself: availability, options, errors, the build flow.

TensorRT cannot be installed here, so the build flow runs against a small stand-in module that records what
the builder asks of it (tests/test_tensorrt_api.py proves every name the code uses exists in the real
bindings). What needs a GPU is in tests/test_tensorrt_gpu.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from sidecars import write_sidecar

from nrp_deploy import fileutil
from nrp_deploy.artifacts import specs
from nrp_deploy.artifacts.sources import ModelSource
from nrp_deploy.artifacts.specs import ShapeProfile
from nrp_deploy.errors import BackendUnavailableError, ExportError, InputError, StaleArtifactError
from nrp_deploy.runtime.backends import available_backends
from nrp_deploy.runtime.backends import tensorrt as trt_backend
from nrp_deploy.runtime.backends.base import BackendNotActiveError
from nrp_deploy.runtime.backends.options import TensorRTOptions
from nrp_deploy.tensorrt import builder as trt_build
from nrp_deploy.tensorrt import cache as trt_cache
from nrp_deploy.tensorrt import engine as trt_engine
from nrp_deploy.tensorrt import support as tensorrt_support

ENV = trt_engine.TargetEnvironment("11.4.0.106", "NVIDIA H100 80GB HBM3", (9, 0), "Linux-x86_64")


def _tiny_onnx(path: Path) -> Path:
    """A 1x1 convolution purifier (3 -> 3 channels, dynamic N/H/W), made with onnx.helper (no torch)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array((np.eye(3, dtype=np.float32) * 0.5).reshape(3, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


# -- without TensorRT -----------------------------------------------------------------------------------


def test_tensorrt_is_reported_unavailable_with_what_to_install():
    reason = available_backends()["tensorrt"]
    assert reason is not None and "TensorRT" in reason and "pip install" in reason


def test_explicit_tensorrt_backend_says_what_to_install_and_auto_skips_it(tmp_path):
    from nrp_deploy.runtime import load_purifier

    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not available.*tensorrt-cu12"):
        load_purifier(onnx, backend="tensorrt")
    with load_purifier(onnx, backend="auto", device="cpu") as purifier:
        assert purifier.backend_name != "tensorrt"
        out = purifier(np.full((1, 8, 8, 3), 200, np.uint8))
        assert out.shape == (1, 8, 8, 3) and out.dtype == np.uint8 and int(out[0, 0, 0, 0]) == 100


def test_build_without_tensorrt_says_what_to_install(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(BackendUnavailableError, match="install NVIDIA TensorRT"):
        trt_build.build_engine(onnx)
    with pytest.raises(InputError, match="does not exist"):
        trt_build.build_engine(tmp_path / "missing.onnx")


_IMPORT_PROBE = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorrt", "torch"):
            raise ImportError(f"{name} is blocked in this test")
        return None

import nrp_deploy.runtime
import nrp_deploy.runtime.backends.tensorrt
import nrp_deploy.tensorrt.cache
import nrp_deploy.kernels.cuda_mem
import nrp_deploy.tensorrt.builder
import nrp_deploy.tensorrt.support
assert "tensorrt" not in sys.modules and "torch" not in sys.modules, "imported at module level"
sys.meta_path.insert(0, Block())
from nrp_deploy.runtime.backends import available_backends
reason = available_backends()["tensorrt"]
assert "TensorRT is not available" in reason, reason
print("ok")
"""


def test_importing_the_runtime_never_imports_tensorrt():
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.fixture
def fake_trt(monkeypatch):
    """Install ``FakeTensorRT`` as ``tensorrt`` (and clear the cached import and logger around it)."""

    def install(module: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        tensorrt_support.import_tensorrt.cache_clear()
        tensorrt_support.tensorrt_logger.cache_clear()
        return module

    yield install
    tensorrt_support.import_tensorrt.cache_clear()
    tensorrt_support.tensorrt_logger.cache_clear()


def test_too_old_tensorrt_is_refused(fake_trt):
    fake_trt(types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8\.6\.1 is too old"):
        tensorrt_support.import_tensorrt()


# -- backend options -------------------------------------------------------------------------------------


def _source(tmp_path: Path) -> ModelSource:
    return ModelSource(kind="onnx", path=tmp_path / "m.onnx", name="m", sha256="0" * 64)


def test_backend_options_are_checked_before_anything_is_loaded(tmp_path):
    source = _source(tmp_path)
    with pytest.raises(BackendUnavailableError, match="belong to another backend"):
        trt_backend.open_backend(source, None, None, {"execution_provider": "cuda"})
    with pytest.raises(InputError, match="unknown tensorrt backend option"):
        trt_backend.open_backend(source, None, None, {"cuda_grahp": True})
    with pytest.raises(BackendUnavailableError, match="CUDA device"):
        trt_backend.open_backend(source, None, "cpu", {})


def test_build_options_from_backend_options():
    def _build_options(options):
        return TensorRTOptions.from_mapping(options).build_options()

    assert _build_options({"cuda_graph": False}) is None  # an engine keeps its own options
    fixed = _build_options({"fixed_shape": (2, 128, 96)})
    assert fixed.profile == ShapeProfile((2, 128, 96), (2, 128, 96), (2, 128, 96))
    given = _build_options({"profile": {"max": (4, 512, 512)}, "optimization_level": 5})
    assert given.profile.max == (4, 512, 512) and given.profile.opt == specs.DEFAULT_PROFILE.opt
    assert given.optimization_level == 5
    with pytest.raises(InputError, match="not both"):
        _build_options({"profile": specs.DEFAULT_PROFILE, "fixed_shape": (1, 224, 224)})
    with pytest.raises(InputError, match="min <= opt <= max"):
        _build_options({"profile": {"min": (2, 8, 8), "opt": (1, 8, 8)}})


def test_backend_describes_its_engine_before_activation(tmp_path):
    meta = _fake_metadata(tmp_path, input_dtype="float16")
    backend = trt_backend.TensorRTBackend(tmp_path / "m.engine", meta, "cuda:1")
    assert (backend.name, backend.device, backend.ordinal, backend.precision) == (
        "tensorrt",
        "cuda:1",
        1,
        "fp16",
    )
    assert backend.thread_safe
    assert backend.input_spec.dtype == "float16" and backend.input_spec.shape == (-1, 3, -1, -1)
    assert backend.profile == specs.DEFAULT_PROFILE
    with pytest.raises(BackendNotActiveError, match="not active"):
        backend.infer(np.zeros((1, 3, 224, 224), np.float32))


def _fake_metadata(tmp_path: Path, **changes) -> trt_engine.EngineMetadata:
    values = dict(
        engine_sha256="e" * 64,
        onnx_path=str(tmp_path / "m.onnx"),
        onnx_sha256="o" * 64,
        precision="fp16",
        profile=specs.profile_to_dict(specs.DEFAULT_PROFILE),
        input_name="input",
        input_dtype="float32",
        output_name="output",
        output_dtype="float32",
        tensorrt_version=ENV.tensorrt_version,
        gpu_name=ENV.gpu_name,
        compute_capability=list(ENV.compute_capability),
        platform=ENV.platform,
        optimization_level=3,
        workspace_mib=2048,
        tf32=True,
    )
    values.update(changes)
    return trt_engine.EngineMetadata(**values)


# -- the build flow, against a stand-in TensorRT ----------------------------------------------------------


class _Enum:
    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value


def _enum(*names: str, start: int = 0) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{n: _Enum(n, i) for i, n in enumerate(names, start)})


class FakeDriver:
    """The slice of ``cuda.bindings.driver`` that making a device current takes: context 100 + ordinal."""

    def __init__(self) -> None:
        self.current, self.retained = 0, 0
        self.pushed: list[int] = []  # the contexts below the current one on the (one thread's) stack

    def cuInit(self, flags):
        return (0,)

    def cuDeviceGet(self, ordinal):
        return 0, ordinal

    def cuDevicePrimaryCtxRetain(self, device):
        self.retained += 1
        return 0, 100 + device

    def cuDevicePrimaryCtxRelease(self, device):
        self.retained -= 1
        return (0,)

    def cuCtxGetCurrent(self):
        return 0, self.current

    def cuCtxSetCurrent(self, context):
        self.current = int(context)
        return (0,)

    def cuCtxPushCurrent(self, context):
        self.pushed.append(self.current)
        self.current = int(context)
        return (0,)

    def cuCtxPopCurrent(self):
        popped, self.current = self.current, self.pushed.pop()
        return 0, popped


DRIVER = FakeDriver()


def current_context() -> int:
    return DRIVER.current


def make_fake_tensorrt(build_fails: bool = False) -> types.ModuleType:
    """A stand-in ``tensorrt`` 11.x that records the builder's calls in ``trt.record``.

    The "ONNX" it parses is JSON: {"layers": [[layer type, [output dtypes]]...], "io": [in dtype, out dtype]},
    or anything starting with b"bad", which fails to parse.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.106"
    trt.record = record = {}
    trt.NetworkDefinitionCreationFlag = _enum("STRONGLY_TYPED")  # bit 0, as in 11.x
    trt.DataType = _enum("FLOAT", "HALF", "INT8")
    trt.LayerType = _enum("CONVOLUTION", "QUANTIZE", "DEQUANTIZE", "CAST")
    trt.MemoryPoolType = _enum("WORKSPACE")
    trt.BuilderFlag = _enum("TF32", "VERSION_COMPATIBLE")
    trt.HardwareCompatibilityLevel = _enum("NONE", "AMPERE_PLUS")
    trt.nptype = lambda dtype: {"FLOAT": np.float32, "HALF": np.float16}[dtype.name]

    class ILogger:
        Severity = _enum("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger

    def tensor(name: str, dtype: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=name, dtype=getattr(trt.DataType, dtype))

    class Layer:
        def __init__(self, kind: str, dtypes: list[str]) -> None:
            self.type = getattr(trt.LayerType, kind)
            self.num_outputs = len(dtypes)
            self._outputs = [tensor(f"t{i}", d) for i, d in enumerate(dtypes)]

        def get_output(self, i: int) -> types.SimpleNamespace:
            return self._outputs[i]

    class Network:
        def __init__(self) -> None:
            self.layers: list[Layer] = []
            self.num_inputs = self.num_outputs = 0

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

        def get_input(self, i: int) -> types.SimpleNamespace:
            return self._io[0]

        def get_output(self, i: int) -> types.SimpleNamespace:
            return self._io[1]

    class OnnxParser:
        def __init__(self, network: Network, logger: object) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            data = Path(path).read_bytes()
            if data.startswith(b"bad"):
                self.errors = ["node 3 (Conv): unsupported attribute", "graph has no outputs"]
                return False
            spec = json.loads(data)
            self.network.layers = [Layer(kind, dtypes) for kind, dtypes in spec["layers"]]
            self.network._io = [tensor("input", spec["io"][0]), tensor("output", spec["io"][1])]
            self.network.num_inputs, self.network.num_outputs = spec.get("counts", (1, 1))
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class Config:
        def __init__(self) -> None:
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.flags: list[str] = ["TF32"]  # TensorRT's default
            self.profiles: list[object] = []
            self.cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: _Enum, size: int) -> None:
            record["pool"] = (pool.name, size)

        def set_flag(self, flag: _Enum) -> None:
            self.flags.append(flag.name)

        def clear_flag(self, flag: _Enum) -> None:
            self.flags = [f for f in self.flags if f != flag.name]

        def add_optimization_profile(self, profile: object) -> int:
            self.profiles.append(profile)
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            record.setdefault("timing_cache_loaded", []).append(bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

    class Profile:
        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            record["profile"] = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger: object) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            record["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            record["config"] = Config()
            return record["config"]

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            record["built_in_context"] = current_context()
            if build_fails:
                self.logger.log(ILogger.Severity.ERROR, "out of workspace for tactic 7")
                return None
            return b"PLAN" + bytes(network.num_layers)

    trt.OnnxParser, trt.Builder = OnnxParser, Builder
    return trt


def _fake_onnx(path: Path, layers: list, io: tuple[str, str] = ("FLOAT", "FLOAT"), **extra) -> Path:
    path.write_text(json.dumps({"layers": layers, "io": list(io), **extra}))
    return path


@pytest.fixture
def fake_build_env(fake_trt, monkeypatch, tmp_path):
    from nrp_deploy.kernels import cuda_mem

    monkeypatch.setattr(cuda_mem, "init_driver", lambda: DRIVER)
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trt_build, "current_environment", lambda device=0: ENV)

    def install(**kwargs) -> types.ModuleType:
        return fake_trt(make_fake_tensorrt(**kwargs))

    return install


def test_build_engine_flow(fake_build_env, tmp_path):
    trt = fake_build_env()
    onnx = _fake_onnx(
        tmp_path / "m.onnx", [["CAST", ["HALF"]], ["CONVOLUTION", ["HALF"]], ["CAST", ["FLOAT"]]]
    )
    options = trt_engine.BuildOptions(
        profile=specs.make_profile((1, 32, 32), (2, 224, 224), (4, 320, 320)),
        optimization_level=5,
        workspace_mib=512,
    )
    meta = trt_build.build_engine(onnx, tmp_path / "out" / "m.engine", options)

    record = trt.record
    assert record["network_flags"] == 1  # 1 << STRONGLY_TYPED, whose bit is 0 in 11.x
    assert record["profile"] == ("input", (1, 3, 32, 32), (2, 3, 224, 224), (4, 3, 320, 320))
    assert record["pool"] == ("WORKSPACE", 512 << 20)
    assert record["config"].builder_optimization_level == 5
    assert record["config"].flags == ["TF32"]  # an fp16 network: TensorRT's default left alone
    engine = tmp_path / "out" / "m.engine"
    assert engine.read_bytes() == b"PLAN\0\0\0"
    assert trt_engine.read_engine_metadata(engine) == meta
    assert meta.precision == "fp16" and meta.tensorrt_version == "11.4.0.106"
    assert meta.gpu_name == ENV.gpu_name and meta.compute_capability == [9, 0]
    assert meta.profile == {"min": [1, 32, 32], "opt": [2, 224, 224], "max": [4, 320, 320]}
    assert meta.onnx_sha256 == fileutil.sha256_file(onnx) and meta.engine_sha256 == fileutil.sha256_file(
        engine
    )
    assert meta.input_dtype == "float32" and meta.built_at
    # the timing cache went to disk, and the next build starts from it
    timing = trt_cache.timing_cache_path(ENV)
    assert timing.read_bytes() == b"+timings"
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        trt_build.build_engine(onnx, engine)
    trt_build.build_engine(onnx, engine, overwrite=True)
    assert record["timing_cache_loaded"] == [b"", b"+timings"]


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([["CONVOLUTION", ["FLOAT"]]], "fp32"),
        ([["CAST", ["HALF"]], ["CONVOLUTION", ["HALF"]]], "fp16"),
        ([["QUANTIZE", ["INT8"]], ["DEQUANTIZE", ["FLOAT"]], ["CONVOLUTION", ["FLOAT"]]], "int8"),
    ],
)
def test_precision_is_read_off_the_network(fake_build_env, tmp_path, layers, expected):
    fake_build_env()
    onnx = _fake_onnx(tmp_path / "m.onnx", layers)
    assert trt_build.build_engine(onnx, use_timing_cache=False).precision == expected
    assert (tmp_path / "m.engine").is_file()


def test_expected_precision_mismatch_names_the_export_command(fake_build_env, tmp_path):
    fake_build_env()
    onnx = _fake_onnx(tmp_path / "m.onnx", [["CONVOLUTION", ["FLOAT"]]])
    with pytest.raises(ExportError, match=r"is a fp32 model, not fp16.*nrp export fp16"):
        trt_build.build_engine(onnx, expect_precision="fp16")
    assert not (tmp_path / "m.engine").exists()


def test_compatibility_options_reach_the_config(fake_build_env, tmp_path):
    trt = fake_build_env()
    onnx = _fake_onnx(tmp_path / "m.onnx", [["CONVOLUTION", ["FLOAT"]]])
    options = trt_engine.BuildOptions(version_compatible=True, hardware_compatibility="ampere_plus")
    meta = trt_build.build_engine(onnx, options=options, use_timing_cache=False)
    config = trt.record["config"]
    assert config.flags == ["VERSION_COMPATIBLE"]  # fp32: TF32 cleared
    assert config.hardware_compatibility_level.name == "AMPERE_PLUS"
    assert meta.version_compatible and meta.hardware_compatibility == "ampere_plus"


@pytest.mark.parametrize(
    ("layers", "tf32"), [([["CONVOLUTION", ["FLOAT"]]], False), ([["CAST", ["HALF"]]], True)]
)
def test_fp32_engines_are_built_without_tf32(fake_build_env, tmp_path, layers, tf32):
    trt = fake_build_env()
    meta = trt_build.build_engine(_fake_onnx(tmp_path / "m.onnx", layers), use_timing_cache=False)
    assert ("TF32" in trt.record["config"].flags) is tf32
    assert meta.tf32 is tf32  # the builder policy is recorded in the sidecar
    assert trt_engine.read_engine_metadata(tmp_path / "m.engine").tf32 is tf32


def test_build_runs_on_the_device_asked_for_and_restores_the_current_context(fake_build_env, tmp_path):
    trt = fake_build_env()
    DRIVER.current = 55  # some context the caller had current
    onnx = _fake_onnx(tmp_path / "m.onnx", [["CONVOLUTION", ["FLOAT"]]])
    trt_build.build_engine(onnx, device=1, use_timing_cache=False)
    assert trt.record["built_in_context"] == 101  # device 1's primary context
    assert DRIVER.current == 55 and DRIVER.retained == 0


def test_parse_and_build_failures_carry_tensorrt_messages(fake_build_env, tmp_path):
    fake_build_env()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"bad model")
    with pytest.raises(
        ExportError, match=r"could not parse .*bad.onnx: node 3 \(Conv\): unsupported attribute"
    ):
        trt_build.build_engine(bad)
    two_outputs = _fake_onnx(tmp_path / "two.onnx", [["CONVOLUTION", ["FLOAT"]]], counts=[1, 2])
    with pytest.raises(ExportError, match="1 inputs and 2 outputs"):
        trt_build.build_engine(two_outputs)
    fake_build_env(build_fails=True)
    onnx = _fake_onnx(tmp_path / "m.onnx", [["CONVOLUTION", ["FLOAT"]]])
    with pytest.raises(ExportError, match=r"failed to build an engine .*out of workspace for tactic 7"):
        trt_build.build_engine(onnx)
    assert not (tmp_path / "m.engine").exists()


def test_engine_cache_with_the_real_builder_function(fake_build_env, tmp_path):
    """ensure_engine + build_engine: built once into the cache, reused, rebuilt when the ONNX changes."""
    fake_build_env()
    onnx = _fake_onnx(tmp_path / "m.onnx", [["CONVOLUTION", ["FLOAT"]]])
    build = trt_build.engine_builder()
    first = trt_cache.ensure_engine(env=ENV, build=build, onnx=onnx)
    assert first.built and first.path.parent == trt_cache.cache_dir()
    assert not trt_cache.ensure_engine(env=ENV, build=build, onnx=onnx).built
    with pytest.raises(StaleArtifactError, match=r"built by TensorRT 11\.4\.0\.106; this is TensorRT 11\.5"):
        onnx.unlink()
        trt_cache.ensure_engine(
            env=trt_engine.TargetEnvironment("11.5.0", ENV.gpu_name, (9, 0), ENV.platform),
            build=build,
            engine=first.path,
        )


def test_classify_precision():
    assert trt_build.classify_precision(["CONVOLUTION"], ["FLOAT"]) == "fp32"
    assert trt_build.classify_precision(["CONVOLUTION", "CAST"], ["FLOAT", "HALF"]) == "fp16"
    assert trt_build.classify_precision(["QUANTIZE", "DEQUANTIZE"], ["INT8", "HALF"]) == "int8"


# -- nrp build / nrp info ----------------------------------------------------------------------------------


def test_nrp_build_help_states_the_real_defaults():
    from nrp_deploy.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub.choices["build"]._actions}
    profile = specs.DEFAULT_PROFILE
    for key in ("min", "opt", "max"):
        assert helps[key].endswith(f"(default: {'x'.join(map(str, getattr(profile, key)))})")
    assert helps["workspace"].endswith(f"(default: {trt_engine.DEFAULT_WORKSPACE_MIB})")
    assert helps["opt_level"].endswith(f"(default: {trt_engine.DEFAULT_OPT_LEVEL})")


def test_nrp_build_errors_are_one_line(tmp_path, capsys):
    from nrp_deploy.cli import main

    onnx = _fake_onnx(tmp_path / "m.onnx", [["CONVOLUTION", ["FLOAT"]]])
    assert main(["build", str(onnx), "--opt", "1x224x224", "--max", "8x100x100"]) == 2
    assert "height must satisfy min <= opt <= max" in capsys.readouterr().err
    assert main(["build", str(onnx), "--min", "32x32"]) == 2
    assert "--min '32x32' must be BATCHxHEIGHTxWIDTH" in capsys.readouterr().err
    assert main(["build", str(onnx)]) == 2
    assert "install NVIDIA TensorRT" in capsys.readouterr().err


def test_nrp_build_with_stand_in_tensorrt(fake_build_env, tmp_path, capsys):
    from nrp_deploy.cli import main

    trt = fake_build_env()
    onnx = _fake_onnx(tmp_path / "m.onnx", [["CAST", ["HALF"]], ["CONVOLUTION", ["HALF"]]])
    argv = [
        "build",
        str(onnx),
        "--max",
        "4x320x320",
        "--opt-level",
        "1",
        "--precision",
        "fp16",
        "--no-timing-cache",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"built {tmp_path / 'm.engine'}: fp16" in err and "TensorRT 11.4.0.106" in err
    assert trt.record["profile"][3] == (4, 3, 320, 320)
    assert trt.record["config"].builder_optimization_level == 1
    assert "timing_cache_loaded" not in trt.record
    assert main(argv) == 2  # the engine exists now
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_nrp_info_json(capsys):
    from nrp_deploy.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tensorrt"]["available"] is False and "install" in info["tensorrt"]["reason"]
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    assert info["backends"]["onnxruntime"] is None and info["backends"]["tensorrt"]
    assert set(info) >= {"torch", "cuda_python", "nvrtc", "gpus"}


def test_engine_records_the_fidelity_verdict_of_its_onnx(fake_build_env, tmp_path):
    fake_build_env()
    onnx = _fake_onnx(tmp_path / "m.onnx", [["CONVOLUTION", ["FLOAT"]]])
    model = {"architecture": "NRP_resG", "config": {"nf": 4, "nb": 1}}
    verdict = write_sidecar(onnx, psnr_db=12.0, model=model)
    assert not verdict.passed
    meta = trt_build.build_engine(onnx, use_timing_cache=False)
    assert meta.verdict == verdict and meta.source["model"] == model
    assert trt_engine.read_engine_metadata(tmp_path / "m.engine").verdict == verdict
