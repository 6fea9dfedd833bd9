"""The Triton Inference Server that the ``nvidia-pytriton`` wheel bundles, and how to run it here.

The wheel carries a real ``tritonserver`` (2.51 in PyTriton 0.7) with the Python backend only, its shared
libraries in ``nvidia_pytriton.libs`` and one Python-backend stub per Python version. Running it directly
needs three things PyTriton's own launcher also arranges: those libraries on ``LD_LIBRARY_PATH``, this
interpreter's ``libpython`` there too (the stub otherwise picks up the system's), and this environment's
``bin`` first on ``PATH`` (the stub finds its ``site-packages``, numpy included, through it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from nrp_deploy.errors import BackendUnavailableError

INSTALL_HINT = (
    "Triton serving needs the server that the nvidia-pytriton wheel bundles: pip install 'nrp-deploy[serve]' "
    "(it requires numpy<2, so give it its own environment; scripts/setup.sh makes .venv-serving)"
)


@dataclass(frozen=True)
class TritonBinary:
    """Paths inside an installed nvidia-pytriton wheel."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def server(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def stub(self) -> Path:
        """The Python-backend stub built for this interpreter's Python version."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise BackendUnavailableError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        return stub

    def make_backends(self, target: Path) -> Path:
        """A backend directory holding the Python backend with this interpreter's stub (Triton looks for
        the stub beside the backend library)."""
        python = target / "python"
        python.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(self.root / "backends" / "python" / name, python / name)
        shutil.copy2(self.stub(), python / "triton_python_backend_stub")
        return target

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        libdir = sysconfig.get_config_var("LIBDIR")
        paths = [p for p in (libdir, str(self.libs), env.get("LD_LIBRARY_PATH")) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env


def find_triton() -> TritonBinary:
    """The installed bundled server, or ``BackendUnavailableError`` saying what to install."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(INSTALL_HINT)
    package = Path(next(iter(spec.submodule_search_locations)))
    binary = TritonBinary(package / "tritonserver", package.parent / "nvidia_pytriton.libs")
    if not binary.server.is_file():
        raise BackendUnavailableError(
            f"{binary.server} is missing: the nvidia-pytriton install is incomplete"
        )
    return binary
