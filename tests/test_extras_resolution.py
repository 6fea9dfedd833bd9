"""The install extras resolve on the platforms they serve and stay on one CUDA major.

The resolution checks (scripts/check_extras.py) run pip's resolver in dry-run mode against PyPI for a
Jetson (linux aarch64, CPython 3.10) and an x86-64 host (CPython 3.11): only package metadata is fetched,
nothing is installed. They need the index: where PyPI does not answer they skip, saying so, and under CI=true
they fail (tests/ci_rule.py), since CI's setup installs from it. Everything else here is offline.
"""

from __future__ import annotations

import importlib
import os
import re
import ssl
import sys
import urllib.request
from pathlib import Path

import pytest
from ci_rule import unavailable

REPO = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(REPO / "scripts"))
check_extras = importlib.import_module("check_extras")
BASE, EXTRAS = check_extras.package_requirements()


def _index_unreachable() -> str | None:
    """Why PyPI cannot be used from here, or None when it answers."""
    cafile = os.environ.get("PIP_CERT") or None
    try:
        context = ssl.create_default_context(cafile=cafile)
        with urllib.request.urlopen(f"{check_extras.INDEX_URL}/pip/", timeout=10, context=context):
            return None
    except OSError as exc:
        return f"PyPI ({check_extras.INDEX_URL}) is not reachable from here: {exc}"


UNREACHABLE = _index_unreachable()


@pytest.fixture(scope="module")
def resolutions():
    if UNREACHABLE:
        unavailable(UNREACHABLE)
    return check_extras.run_all()


@pytest.mark.parametrize("check", check_extras.CHECKS, ids=lambda c: f"{c.extra}-{c.target.name}")
def test_extra_resolves_on_one_cuda_major(resolutions, check):
    names, problems = resolutions[check]
    assert problems == [], f"[{check.extra}] on {check.target.name}: " + "; ".join(problems)
    resolved = {n.split(" ")[0] for n in names}
    for requirement in BASE:  # the base install comes along
        assert re.split(r"[<>=!~;\[ ]", requirement)[0].lower() in resolved


def test_jetson_takes_cuda_nvrtc_tensorrt_and_onnxruntime_from_jetpack(resolutions):
    names, _ = resolutions[check_extras.Check("jetson", check_extras.JETSON, 12)]
    resolved = {n.split(" ")[0]: n.split(" ")[1] for n in names}
    assert resolved["cuda-bindings"].startswith("12.")
    assert not [n for n in resolved if n.startswith(("nvidia-", "onnxruntime", "tensorrt", "torch"))]


# -- offline ---------------------------------------------------------------------------------------------


def test_gpu_is_the_cuda13_set_and_cpu_excludes_gpu():
    assert EXTRAS["gpu"] == EXTRAS["gpu-cu13"]
    for extra in ("gpu", "gpu-cu12", "gpu-cu13"):
        assert any(r.startswith("onnxruntime-gpu") for r in EXTRAS[extra])
    assert not any(r.startswith("onnxruntime") for r in EXTRAS["jetson"])


def test_every_checked_extra_exists_and_every_gpu_extra_is_checked():
    checked = {c.extra for c in check_extras.CHECKS}
    assert checked <= set(EXTRAS)
    assert {e for e in EXTRAS if e.startswith("gpu") or e in ("jetson", "nvrtc", "cpu")} <= checked


def _item(name: str, version: str, requires: tuple[str, ...] = ()) -> dict:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


@pytest.mark.parametrize(
    ("item", "major"),
    [
        (_item("cuda-bindings", "12.9.10"), 12),
        (_item("cuda-bindings", "13.5.0"), 13),
        (_item("nvidia-cuda-nvrtc-cu12", "12.9.86"), 12),
        (_item("nvidia-cuda-nvrtc", "13.5.37"), 13),
        (_item("nvidia-cudnn-cu13", "9.14.0"), 13),
        (_item("onnxruntime-gpu", "1.26.0", ('nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"',)), 12),
        (_item("onnxruntime-gpu", "1.27.0", ('nvidia-cuda-runtime-cu13~=13.0; extra == "cuda"',)), 13),
        (_item("onnxruntime-gpu", "1.31.1", ('nvidia-cuda-runtime~=13.0; extra == "cuda"',)), 13),
        (_item("cuda-pathfinder", "1.9.1"), None),
        (_item("numpy", "2.4.6"), None),
        (_item("onnxruntime", "1.32.0"), None),
    ],
)
def test_cuda_major_of_a_resolved_package(item, major):
    assert check_extras.cuda_major(item) == major


def test_a_mixed_resolution_is_reported():
    check = check_extras.Check("gpu-cu12", check_extras.X86, 12)
    installed = [_item("cuda-bindings", "13.5.0"), _item("nvidia-cuda-nvrtc-cu12", "12.9.86")]
    assert check_extras.problems(check, installed) == [
        "cuda-bindings 13.5.0 is a CUDA 13 package (CUDA 12 wanted)"
    ]
    cpu = check_extras.Check("cpu", check_extras.X86, None)
    assert check_extras.problems(cpu, installed[:1]) == [
        "cuda-bindings 13.5.0 is a CUDA 13 package (no CUDA package wanted)"
    ]
