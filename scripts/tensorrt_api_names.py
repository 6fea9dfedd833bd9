#!/usr/bin/env python3
"""The names each supported TensorRT release exposes to Python, read from NVIDIA's own bindings wheels.

TensorRT's libraries cannot be installed on our machines, but the ``tensorrt-cu12-bindings`` wheels on
PyPI can: they hold the compiled ``tensorrt_bindings/tensorrt.so``, which needs only nine C entry points
from libnvinfer / libnvonnxparser / libnvinfer_plugin (the factories and plugin registries); every class,
enum, method and property is registered from the extension itself. Linking tiny stand-ins for those nine
functions next to the extension lets the real module import, so its names can be listed exactly as users
will see them (nothing is ever called: the stubs return null). tests/test_tensorrt_api.py checks every
TensorRT name our code uses against these lists, so a removed API (``BuilderFlag.FP16``,
``int8_calibrator``, ``device_memory_size``) fails a CPU test instead of a user's first build.

    python scripts/tensorrt_api_names.py fetch [DIR]      # download the wheels (pip download --no-deps)
    python scripts/tensorrt_api_names.py snapshot [DIR]   # rewrite tests/data/tensorrt_api/names.txt
    python scripts/tensorrt_api_names.py show VERSION [DIR]

DIR defaults to $NRP_TRT_BINDINGS_DIR or ~/.cache/nrp_deploy/tensorrt-bindings. Needs a C compiler (cc).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# The oldest and newest release of each supported major: 10.3 is what JetPack 6 ships, 11.0 the first
# strongly-typed-only release. An API present in all four exists throughout both majors in practice.
VERSIONS = ("10.3.0", "10.16.1.11", "11.0.0.114", "11.4.0.106")
PACKAGE = "tensorrt-cu12-bindings"
SNAPSHOT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tensorrt_api" / "names.txt"

# The only symbols tensorrt.so takes from TensorRT's libraries (nm -D --undefined-only, 10.3 to 11.4).
_STUB_SOURCE = """
void *createInferBuilder_INTERNAL(void *a, int b) { return 0; }
void *createInferRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
void *createInferRuntime_INTERNAL(void *a, int b) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
void *createNvOnnxParser_INTERNAL(void *a, void *b, int c) { return 0; }
void *getBuilderPluginRegistry(int a) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void *a, const char *b) { return 0; }
"""
_PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:")
_STUB_LIBS = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")

# Runs in a fresh interpreter with only the extracted wheel on its path: prints every public name.
_LISTER = """
import inspect, json, tensorrt_bindings as trt
names = ["__version__"]
for name in dir(trt):
    if name.startswith("_"):
        continue
    names.append(name)
    obj = getattr(trt, name)
    if inspect.isclass(obj):
        for member in dir(obj):
            if member.startswith("_"):
                continue
            names.append(f"{name}.{member}")
            inner = getattr(obj, member)
            if inspect.isclass(inner) and inner.__qualname__.endswith(f"{name}.{member}"):  # nested enums
                names.extend(f"{name}.{member}.{m}" for m in dir(inner) if not m.startswith("_"))
print(json.dumps({"version": trt.__version__, "names": sorted(set(names))}))
"""


def default_dir() -> Path:
    override = os.environ.get("NRP_TRT_BINDINGS_DIR")
    return Path(override) if override else Path.home() / ".cache" / "nrp_deploy" / "tensorrt-bindings"


def wheel_for(version: str, directory: Path) -> Path | None:
    """The downloaded wheel of ``version`` for this interpreter, if present."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    matches = sorted(directory.glob(f"{PACKAGE.replace('-', '_')}-{version}-{tag}-*.whl"))
    return matches[0] if matches else None


def fetch(directory: Path) -> list[Path]:
    """Download the bindings wheel of every version in VERSIONS for this interpreter (binary, no deps).

    A release with no wheel for this Python (10.3 stops at cp312) is reported and skipped.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for version in VERSIONS:
        if wheel_for(version, directory) is None:
            done = subprocess.run(
                [*_PIP_DOWNLOAD, "--dest", str(directory), f"{PACKAGE}=={version}"], check=False
            )
            if done.returncode != 0:
                print(f"warning: no {PACKAGE} {version} wheel for this Python; skipped", file=sys.stderr)
    return [w for v in VERSIONS if (w := wheel_for(v, directory)) is not None]


def list_names(wheel: Path) -> dict[str, object]:
    """Import the wheel's extension against stub libraries in a subprocess; return its version and names."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise RuntimeError("no C compiler (cc) found: it is needed to link the stand-in TensorRT libraries")
    with tempfile.TemporaryDirectory(prefix="trt-names-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(root)
        ext = root / "tensorrt_bindings" / "tensorrt.so"
        major = wheel.name.split("-")[1].split(".")[0]  # the libraries' soname carries the major only
        source = root / "stub.c"
        source.write_text(_STUB_SOURCE)
        for lib in _STUB_LIBS:
            soname = f"{lib}.so.{major}"
            subprocess.run(
                [
                    compiler,
                    "-shared",
                    "-fPIC",
                    f"-Wl,-soname,{soname}",
                    "-o",
                    str(ext.parent / soname),
                    str(source),
                ],
                check=True,
            )
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
        env["PYTHONPATH"] = str(root)
        out = subprocess.run(
            [sys.executable, "-c", _LISTER],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
        )
        if out.returncode != 0:
            raise RuntimeError(f"importing {wheel.name} against stub libraries failed:\n{out.stderr}")
        return json.loads(out.stdout)


def read_snapshot(path: Path = SNAPSHOT) -> dict[str, set[str]]:
    """version -> names, from the committed snapshot."""
    versions: list[str] = []
    names: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# versions:"):
            versions = line.split(":", 1)[1].split()
            names = {v: set() for v in versions}
        elif line and not line.startswith("#"):
            name, _, present = line.partition(" ")
            for version in present.split(",") if present else versions:
                names[version].add(name)
    return names


def format_snapshot(listed: dict[str, set[str]]) -> str:
    versions = list(listed)
    lines = [
        "# TensorRT Python binding names (module level and class members) by release.",
        f"# Generated by scripts/tensorrt_api_names.py from the {PACKAGE} wheels; do not edit by hand.",
        "# Each line: NAME, then the releases that have it when not all of them do.",
        f"# versions: {' '.join(versions)}",
    ]
    for name in sorted(set().union(*listed.values())):
        present = [v for v in versions if name in listed[v]]
        lines.append(name if len(present) == len(versions) else f"{name} {','.join(present)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("fetch", "snapshot", "show"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "show":
        version, rest = rest[0], rest[1:]
    directory = Path(rest[0]) if rest else default_dir()
    if command == "fetch":
        wheels = fetch(directory)
        for wheel in wheels:
            print(wheel)
        return 0 if wheels else 1
    if command == "show":
        wheel = wheel_for(version, directory)
        if wheel is None:
            print(f"no {PACKAGE} {version} wheel in {directory}; run 'fetch' first", file=sys.stderr)
            return 1
        print("\n".join(list_names(wheel)["names"]))
        return 0
    listed = {}
    for version in VERSIONS:
        wheel = wheel_for(version, directory)
        if wheel is None:
            print(f"no {PACKAGE} {version} wheel in {directory}; run 'fetch' first", file=sys.stderr)
            return 1
        listed[version] = set(list_names(wheel)["names"])
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(format_snapshot(listed), encoding="utf-8")
    print(f"wrote {SNAPSHOT} ({sum(len(n) for n in listed.values())} names over {len(listed)} releases)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
