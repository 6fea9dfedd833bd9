#!/usr/bin/env python3
"""Resolve the install extras of setup.py for the platforms they serve, with pip's own resolver, and check
that each one stays on a single CUDA major.

An extra that resolves on the machine at hand can still fail on a Jetson (aarch64, CPython 3.10) or pull a
CUDA 13 package onto a CUDA 12 host. pip can resolve for another platform without installing anything
(``pip install --dry-run --report`` with ``--platform`` / ``--python-version`` / ``--only-binary=:all:``,
which fetches only package metadata), so every check below runs here against PyPI itself, ignoring local
pip configuration (extra indexes, find-links, constraints) so that the answer is what users get.

    python scripts/check_extras.py      # one line per check; exit status 1 when any check fails

tests/test_extras_resolution.py runs the same checks where PyPI is reachable and skips them otherwise.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
INDEX_URL = "https://pypi.org/simple"
# pip settings that would point the resolver at anything but PyPI, or constrain it.
_LOCAL_PIP_SETTINGS = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_CONSTRAINT",
    "PIP_REQUIREMENT",
    "PIP_CONFIG_FILE",
)


@dataclass(frozen=True)
class Target:
    """A platform pip resolves for: its wheel platform tags and CPython version."""

    name: str
    platforms: tuple[str, ...]
    python: str

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")


JETSON = Target(  # JetPack 6: Ubuntu 22.04 (glibc 2.35), CPython 3.10
    "linux-aarch64-cp310",
    ("manylinux_2_35_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64", "linux_aarch64"),
    "3.10",
)
X86 = Target(
    "linux-x86_64-cp311",
    ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64", "linux_x86_64"),
    "3.11",
)


@dataclass(frozen=True)
class Check:
    """An extra that must resolve for ``target``; ``cuda`` is the one CUDA major all its CUDA packages must
    have (None: no CUDA packages allowed at all)."""

    extra: str
    target: Target
    cuda: int | None


CHECKS = (
    Check("jetson", JETSON, 12),
    Check("gpu-cu12", X86, 12),
    Check("gpu-cu13", X86, 13),
    Check("gpu", X86, 13),
    Check("nvrtc", X86, 13),
    Check("cpu", JETSON, None),
    Check("cpu", X86, None),
    Check("ray", X86, None),  # Ray's CPU wheels: neither torch (whose Linux wheels pull CUDA) nor CUDA
)


def package_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """(install_requires, extras_require) exactly as setup.py passes them to setuptools."""
    captured: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(REPO)  # setup.py reads README.md relative to the working directory
    try:
        with mock.patch("setuptools.setup", side_effect=lambda **kw: captured.update(kw)):
            runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
    return list(captured.get("install_requires", [])), dict(captured.get("extras_require", {}))


def pip_environment() -> dict[str, str]:
    """This process's environment without local pip configuration (certificates and proxies stay)."""
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_PIP_SETTINGS}
    env["PIP_CONFIG_FILE"] = os.devnull  # skips every pip.conf, global ones included
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve(requirements: list[str], target: Target) -> list[dict[str, Any]]:
    """pip's resolution of ``requirements`` for ``target`` as its report's install list; RuntimeError with
    pip's own message when it does not resolve."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    command += ["--report", "-", "--index-url", INDEX_URL, "--only-binary=:all:", "--timeout", "30"]
    command += ["--implementation", "cp", "--python-version", target.python, "--abi", target.abi]
    for tag in target.platforms:
        command += ["--platform", tag]
    done = subprocess.run(
        [*command, *requirements], capture_output=True, text=True, env=pip_environment(), timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or done.stdout.strip())
    return list(json.loads(done.stdout)["install"])


def cuda_major(item: dict[str, Any]) -> int | None:
    """The CUDA major a resolved package is built for, or None for a package that is not CUDA-specific."""
    meta = item["metadata"]
    name = meta["name"].lower().replace("_", "-")
    major = int(meta["version"].split(".")[0])
    suffix = re.search(r"-cu(\d+)$", name)
    if suffix:
        return int(suffix.group(1))
    if name == "cuda-bindings" or name.startswith("nvidia-cuda-"):
        return major
    if name == "onnxruntime-gpu":  # its `cuda` extra names the CUDA runtime it was built against
        for requirement in meta.get("requires_dist", []):
            found = re.match(r"nvidia-cuda-runtime(?:-cu(\d+))?\s*~=\s*(\d+)", requirement)
            if found:
                return int(found.group(1) or found.group(2))
        raise ValueError(f"cannot tell the CUDA major of onnxruntime-gpu {meta['version']}")
    return None


def problems(check: Check, installed: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a resolution: CUDA packages of another major than the check allows."""
    found = []
    for item in installed:
        major = cuda_major(item)
        if major is not None and major != check.cuda:
            meta = item["metadata"]
            wanted = f"CUDA {check.cuda}" if check.cuda is not None else "no CUDA package"
            found.append(f"{meta['name']} {meta['version']} is a CUDA {major} package ({wanted} wanted)")
    return found


def run_check(check: Check, base: list[str], extras: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(resolved 'name version' list, problems) for one check; an unresolvable extra is a problem."""
    if check.extra not in extras:
        return [], [f"setup.py has no extra {check.extra!r}"]
    try:
        installed = resolve([*base, *extras[check.extra]], check.target)
    except RuntimeError as exc:
        return [], [f"does not resolve: {exc}"]
    names = sorted(f"{i['metadata']['name']} {i['metadata']['version']}" for i in installed)
    return names, problems(check, installed)


def run_all(checks: tuple[Check, ...] = CHECKS) -> dict[Check, tuple[list[str], list[str]]]:
    """Every check, resolved concurrently (the work is waiting on the index)."""
    base, extras = package_requirements()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda c: run_check(c, base, extras), checks)
        return dict(zip(checks, results, strict=True))


def main() -> int:
    failed = False
    for check, (names, found) in run_all().items():
        label = f"[{check.extra}] {check.target.name}"
        if found:
            failed = True
            print(f"FAIL {label}: " + "; ".join(found))
        else:
            print(f"ok   {label}: {', '.join(names)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
