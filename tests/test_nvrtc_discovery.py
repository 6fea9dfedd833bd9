"""NVRTC is found from a pip wheel or from the system's CUDA (JetPack's on Jetson), and the runtime says which.

The real cases run without a GPU: NVRTC needs none. "With the wheel" loads the nvidia-cuda-nvrtc wheel of
this environment. "Without the wheel" runs a fresh virtual environment that sees cuda-python but not the
nvidia/ wheel directory, first with no NVRTC anywhere (a clear error naming both routes), then with the same
library placed in a stand-in CUDA install found through CUDA_HOME or the loader's search path, as on a
Jetson.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from nrp_deploy.kernels import cuda_api
from nrp_deploy.kernels.compiler import nvrtc_version
from nrp_deploy.kernels.cuda_api import nvrtc_source

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("path", "found_via", "expected"),
    [
        ("/venv/lib/python3.11/site-packages/nvidia/cu13/lib/libnvrtc.so.13", "site-packages", "wheel"),
        ("/usr/lib/python3/dist-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12", "system", "wheel"),
        ("/usr/local/cuda-12.6/targets/aarch64-linux/lib/libnvrtc.so.12", "system", "system"),
        ("/usr/local/cuda/lib64/libnvrtc.so.12", "CUDA_PATH", "system"),
        ("/opt/conda/lib/libnvrtc.so.12", "conda", "conda"),
        (None, "system", "system"),
        # an nvidia/ directory outside any Python environment is a system install, not a wheel
        ("/opt/nvidia/cuda/lib64/libnvrtc.so.12", "system", "system"),
    ],
)
def test_nvrtc_source_tells_wheel_from_system(path, found_via, expected):
    assert nvrtc_source(path, found_via) == expected


def _nvrtc_wheel() -> importlib.metadata.Distribution | None:
    for name in ("nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12"):
        try:
            return importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _wheel_library() -> Path:
    dist = _nvrtc_wheel()
    assert dist is not None
    libs = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name.startswith("libnvrtc.so")]
    assert libs, f"{dist.metadata['Name']} lists no libnvrtc"
    return libs[0]


needs_wheel = pytest.mark.skipif(
    _nvrtc_wheel() is None or importlib.util.find_spec("cuda.pathfinder") is None,
    reason="no NVRTC wheel (nvidia-cuda-nvrtc / -cu12) with cuda-python here: pip install 'nrp-deploy[nvrtc]'",
)


@needs_wheel
def test_nvrtc_from_the_wheel_is_reported_as_the_wheel():
    library = cuda_api.nvrtc_library()
    assert library.source == "wheel"
    assert library.found_via == "site-packages"
    assert Path(library.path).resolve() == _wheel_library().resolve()


@needs_wheel
def test_nrp_info_says_where_nvrtc_came_from():
    from nrp_deploy.runtime.info import collect_info, format_info

    info = collect_info()
    assert info["nvrtc"]["available"] and info["nvrtc"]["source"] == "wheel"
    line = next(x for x in format_info(info).splitlines() if x.startswith("nvrtc"))
    assert f"from the wheel: {info['nvrtc']['path']}" in line


# -- without the wheel: a fresh environment that sees cuda-python but not nvidia/ --------------------------

_PROBE = """
import json
from nrp_deploy.errors import BackendUnavailableError
from nrp_deploy.kernels import cuda_api
from nrp_deploy.kernels.compiler import nvrtc_version
try:
    lib = cuda_api.nvrtc_library()
    out = {"source": lib.source, "found_via": lib.found_via, "path": lib.path, "version": nvrtc_version()}
except BackendUnavailableError as exc:
    out = {"error": str(exc)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory) -> Path:
    """A venv whose only extra path holds links to cuda-python, numpy and nrp_deploy (no nvidia/ wheels)."""
    root = tmp_path_factory.mktemp("no-nvrtc-wheel")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120
    )
    shim = root / "shim"
    shim.mkdir()
    here = Path(site.getsitepackages()[0])
    wanted = ["cuda", "numpy", "numpy.libs", "cuda_bindings-*.dist-info", "cuda_pathfinder-*.dist-info"]
    for pattern in wanted:
        for entry in here.glob(pattern):
            (shim / entry.name).symlink_to(entry)
    (shim / "nrp_deploy").symlink_to(REPO / "nrp_deploy")
    pth_dir = next((root / "venv" / "lib").glob("python3*/site-packages"))
    (pth_dir / "shim.pth").write_text(f"{shim}\n")
    return root


def _probe(root: Path, **env_vars: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH", "PYTHONPATH")
    }
    env.update(env_vars)
    out = subprocess.run(
        [str(root / "venv" / "bin" / "python"), "-c", _PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _system_cuda(root: Path) -> Path:
    """A stand-in CUDA install (lib64/ with libnvrtc and its builtins), linked or copied from the wheel."""
    lib64 = root / "cuda" / "lib64"
    if not lib64.is_dir():
        lib64.mkdir(parents=True)
        for src in _wheel_library().parent.glob("libnvrtc*.so*"):
            try:
                os.link(src, lib64 / src.name)
            except OSError:  # another file system
                shutil.copy2(src, lib64 / src.name)
    return root / "cuda"


@needs_wheel
def test_without_wheel_or_system_nvrtc_the_error_names_both_routes(bare_env):
    result = _probe(bare_env)
    if "source" in result:
        pytest.skip(f"this machine has a system NVRTC ({result['path']}), so none-anywhere cannot be staged")
    message = result["error"]
    assert "neither from a wheel nor from the system" in message
    assert "pip install nvidia-cuda-nvrtc" in message and "CUDA_HOME" in message


@needs_wheel
def test_system_nvrtc_through_cuda_home(bare_env):
    cuda = _system_cuda(bare_env)
    result = _probe(bare_env, CUDA_HOME=str(cuda))
    assert result.get("source") == "system", result
    assert Path(result["path"]).parent == cuda / "lib64"
    assert tuple(result["version"]) == nvrtc_version()  # the same library, working from its new place


@needs_wheel
def test_system_nvrtc_through_the_loader_search_path(bare_env):
    cuda = _system_cuda(bare_env)
    result = _probe(bare_env, LD_LIBRARY_PATH=str(cuda / "lib64"))
    assert result.get("source") == "system", result
    assert Path(result["path"]).parent == cuda / "lib64"
