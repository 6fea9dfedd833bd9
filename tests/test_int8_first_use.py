"""INT8 exported on first use from a user's plain script: the quantiser's own process must never import
the caller's ``__main__``.

A ``multiprocessing`` spawn re-imports it: a script without an ``if __name__ == "__main__":`` guard ran
its top-level code again in the child (and failed with ``BrokenProcessPool``), and code read from stdin
could not be re-imported at all (``FileNotFoundError: '<stdin>'``). Each test exports into its own empty
artifact cache, so the quantisation really runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nrp_deploy.errors import ExportError
from nrp_deploy.export.ort_quant import quantize_ort_qdq_isolated
from nrp_deploy.models import ModelSpec

# No __main__ guard: everything runs at import, and every run appends one line to runs.txt.
SCRIPT = """\
import numpy as np
from nrp_deploy.runtime import load_purifier

with open("runs.txt", "a") as fh:
    fh.write("ran\\n")
purifier = load_purifier("tiny.pth", backend="onnxruntime", precision="int8", threads=1, allow_failed=True)
print("shape", purifier(np.zeros((16, 16, 3), np.uint8)).shape)
"""


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(ModelSpec("NRP_resG", {"nf": 4, "nb": 1}).build().state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "script.py").write_text(SCRIPT)
    return tmp_path


def _run(workdir: Path, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NRP_DEPLOY_CACHE": str(workdir / "cache")}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=workdir,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_exported_once(workdir: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shape (16, 16, 3)" in done.stdout
    assert (
        workdir / "runs.txt"
    ).read_text() == "ran\n"  # the script's top level ran once, in its own process
    assert len(list((workdir / "cache").glob("*-int8-ort-*.onnx"))) == 1


def test_int8_on_first_use_from_a_script_without_a_main_guard(workdir):
    _assert_exported_once(workdir, _run(workdir, ["script.py"]))


def test_int8_on_first_use_from_code_read_on_stdin(workdir):
    _assert_exported_once(workdir, _run(workdir, ["-"], stdin=SCRIPT))


def test_a_failure_in_the_quantiser_process_is_raised_with_its_reason(tmp_path):
    crops = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ExportError, match=r"failed in its own process: .*missing\.onnx"):
        quantize_ort_qdq_isolated(tmp_path / "missing.onnx", tmp_path / "int8.onnx", crops, progress=False)
    assert not list(tmp_path.iterdir())  # the crops handed to the child are removed
