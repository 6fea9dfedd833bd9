"""Guards for what edge GPUs and older hosts lack, each refusing with a message that says what to do.

- TensorRT older than 10 (JetPack 6.0 ships 8.6): refused with what to install, checked with a stand-in 8.6
  module; a stand-in built from the committed TensorRT 10.3 name snapshot (JetPack 6.1/6.2) passes.
- Build options the GPU cannot honour (hardware compatibility on Jetson's integrated GPUs, or below sm_80)
  are refused before TensorRT is asked to build anything.
- A driver older than the installed cuda-bindings' CUDA major: named as such, with both versions.
"""

from __future__ import annotations

import sys
import types

import pytest
from test_tensorrt_api import SNAPSHOT

from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.kernels import cuda_api
from nrp_deploy.runtime.backends import available_backends
from nrp_deploy.tensorrt import builder as trt_build
from nrp_deploy.tensorrt import engine as trt_engine
from nrp_deploy.tensorrt import support as tensorrt_support
from nrp_deploy.tensorrt.support import check_build_options, unsupported_build_options

ORIN = trt_engine.TargetEnvironment("10.3.0.30", "Orin", (8, 7), "Linux-aarch64")
XAVIER = trt_engine.TargetEnvironment("8.5.2.2", "Xavier", (7, 2), "Linux-aarch64")
T4 = trt_engine.TargetEnvironment("10.3.0", "Tesla T4", (7, 5), "Linux-x86_64")
A100 = trt_engine.TargetEnvironment("10.3.0", "NVIDIA A100-SXM4-40GB", (8, 0), "Linux-x86_64")
H100 = trt_engine.TargetEnvironment("11.4.0.106", "NVIDIA H100 80GB HBM3", (9, 0), "Linux-x86_64")
AMPERE_PLUS = trt_engine.BuildOptions(hardware_compatibility="ampere_plus")


def module_from_names(version: str, names: set[str]) -> types.ModuleType:
    """A stand-in ``tensorrt`` exposing exactly ``names`` (dotted, as in the snapshot) and ``__version__``."""
    trt = types.ModuleType("tensorrt")
    for name in sorted(names):
        if name == "__version__":
            continue
        owner = trt
        for part in name.split("."):
            if not hasattr(owner, part):
                setattr(owner, part, types.SimpleNamespace())
            owner = getattr(owner, part)
    trt.__version__ = version
    return trt


@pytest.fixture
def installed_trt(monkeypatch):
    """Put a stand-in module in place of ``tensorrt`` with the cached import cleared around it."""

    def install(module: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        tensorrt_support.import_tensorrt.cache_clear()
        return module

    yield install
    tensorrt_support.import_tensorrt.cache_clear()


# -- TensorRT version ------------------------------------------------------------------------------------


def jetpack60_tensorrt() -> types.ModuleType:
    """TensorRT 8.6 as JetPack 6.0 ships it: no strongly typed networks (the 10.3 names minus the flag)."""
    names = {n for n in SNAPSHOT["10.3.0"] if not n.startswith("NetworkDefinitionCreationFlag.STRONGLY")}
    return module_from_names("8.6.2.3", names)


def test_snapshot_stand_in_is_accepted_and_has_what_the_build_needs(installed_trt):
    trt = installed_trt(module_from_names("10.3.0", SNAPSHOT["10.3.0"]))
    assert tensorrt_support.import_tensorrt() is trt
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    # the option the Jetson guard refuses exists in 10.3's API: only the platform rejects it
    assert hasattr(trt.HardwareCompatibilityLevel, "AMPERE_PLUS")


def test_tensorrt_8_6_is_refused_with_what_to_install(installed_trt):
    installed_trt(jetpack60_tensorrt())
    with pytest.raises(BackendUnavailableError) as info:
        tensorrt_support.import_tensorrt()
    message = str(info.value)
    assert "TensorRT 8.6.2.3 is too old" in message
    assert "JetPack 6.1 or 6.2" in message and "TensorRT 10.3" in message
    assert "tensorrt-cu12" in message  # and the route off Jetson
    assert available_backends()["tensorrt"]  # a reason: auto never picks it


def test_tensorrt_8_6_stops_a_build_before_anything_is_read(installed_trt, tmp_path):
    installed_trt(jetpack60_tensorrt())
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    with pytest.raises(BackendUnavailableError, match="too old"):
        trt_build.build_engine(onnx)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("version", ["unknown", "", "x.y"])
def test_unreadable_tensorrt_version_is_refused(version):
    with pytest.raises(BackendUnavailableError, match="cannot read the TensorRT version"):
        tensorrt_support.check_tensorrt_version(version)


@pytest.mark.parametrize("version", ["10.3.0", "10.3.0.30", "10.16.1.11", "11.4.0.106"])
def test_supported_tensorrt_versions_pass(version):
    tensorrt_support.check_tensorrt_version(version)


# -- build options the platform does not support -------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (ORIN, "not supported on Jetson's integrated GPUs (Orin, sm_87)"),
        (XAVIER, "not supported on Jetson's integrated GPUs (Xavier, sm_72)"),
        (T4, "needs an Ampere or later GPU (sm_80+) to build on; Tesla T4 is sm_75"),
        (A100, None),
        (H100, None),
    ],
)
def test_hardware_compatibility_is_checked_against_the_gpu(env, expected):
    reasons = unsupported_build_options(AMPERE_PLUS, env)
    if expected is None:
        assert reasons == []
        check_build_options(AMPERE_PLUS, env)
    else:
        assert len(reasons) == 1 and expected in reasons[0]
        with pytest.raises(InputError, match="--ampere-plus"):
            check_build_options(AMPERE_PLUS, env)


def test_default_options_build_everywhere():
    for env in (ORIN, XAVIER, T4, A100, H100):
        assert unsupported_build_options(trt_engine.BuildOptions(), env) == []
        assert unsupported_build_options(trt_engine.BuildOptions(version_compatible=True), env) == []


def test_jetson_build_with_ampere_plus_is_refused_before_the_builder_exists(
    installed_trt, monkeypatch, tmp_path
):
    trt = installed_trt(module_from_names("10.3.0", SNAPSHOT["10.3.0"]))
    builders = []
    trt.Builder = lambda logger: builders.append(logger)  # would be the first TensorRT object of a build
    monkeypatch.setattr(trt_build, "current_environment", lambda device=0: ORIN)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    with pytest.raises(InputError, match="not supported on Jetson"):
        trt_build.build_engine(onnx, options=AMPERE_PLUS)
    assert builders == []
    assert not (tmp_path / "m.engine").exists()


# -- the driver against the installed cuda-bindings ----------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "bindings", "expected"),
    [
        (
            12060,
            "13.5.0",
            ["CUDA 12.6", "cuda-bindings 13.5.0", "580.65.06", "nrp-deploy[gpu-cu12]", "jetson"],
        ),
        (12020, "13.4.4", ["CUDA 12.2", "cuda-bindings 13.4.4"]),  # JetPack 6.0
        (11080, "12.9.10", ["CUDA 11.8", "cuda-bindings 12.9.10", "525.60.13", "upgrade the driver"]),
    ],
)
def test_driver_too_old_names_both_versions(driver, bindings, expected):
    reason = cuda_api.driver_too_old(driver, bindings)
    assert reason is not None
    for part in expected:
        assert part in reason


@pytest.mark.parametrize(
    ("driver", "bindings"),
    [(12060, "12.9.10"), (12020, "12.9.10"), (13000, "13.5.0"), (13020, "12.9.10"), (12060, "unknown")],
)
def test_matching_or_newer_driver_passes(driver, bindings):
    assert cuda_api.driver_too_old(driver, bindings) is None


class CUresult(int):
    """A cuda-bindings result code: an int with a name."""

    @property
    def name(self) -> str:
        return "CUDA_SUCCESS" if self == 0 else f"CUDA_ERROR_{int(self)}"


class FakeDriver(types.ModuleType):
    """``cuda.bindings.driver`` on a machine whose driver supports CUDA ``version``."""

    def __init__(self, version: int, init_error: int = 0) -> None:
        super().__init__("cuda.bindings.driver")
        self.version, self.init_error = version, init_error

    def cuInit(self, flags: int):
        return (CUresult(self.init_error),)

    def cuDriverGetVersion(self):
        return CUresult(0), self.version

    def cuDeviceGetCount(self):
        return CUresult(0), 1


@pytest.mark.parametrize("init_error", [0, 999])  # cuInit may succeed or fail on the mismatched pair
def test_init_driver_refuses_a_driver_older_than_the_bindings(monkeypatch, init_error):
    monkeypatch.setattr(cuda_api, "driver_module", lambda: FakeDriver(12060, init_error))
    monkeypatch.setattr(cuda_api, "bindings_version", lambda: "13.5.0")
    with pytest.raises(
        BackendUnavailableError, match=r"supports CUDA 12\.6, but the installed cuda-bindings 13\.5\.0"
    ):
        cuda_api.init_driver()
    assert cuda_api.cuda_device_count() == 0


def test_init_driver_accepts_a_matching_driver(monkeypatch):
    driver = FakeDriver(12060)
    monkeypatch.setattr(cuda_api, "driver_module", lambda: driver)
    monkeypatch.setattr(cuda_api, "bindings_version", lambda: "12.9.10")
    assert cuda_api.init_driver() is driver
    assert cuda_api.cuda_device_count() == 1


def test_nrp_info_reports_the_driver_mismatch(monkeypatch):
    from nrp_deploy.runtime.info import _gpus

    monkeypatch.setattr(cuda_api, "driver_module", lambda: FakeDriver(12060))
    monkeypatch.setattr(cuda_api, "bindings_version", lambda: "13.5.0")
    gpus = _gpus()
    assert gpus["driver"] is None and gpus["devices"] == []
    assert "needs a CUDA 13 driver (Linux driver >= 580.65.06)" in gpus["reason"]
