"""Every TensorRT name our code uses exists in the Python bindings of each supported release.

The names come from the code's syntax tree (``trt.X.Y`` chains and attributes of variables named in
``TRT_OBJECTS``), so the check cannot drift from the code. They are checked against the committed snapshot
tests/data/tensorrt_api/names.txt (always) and, when the bindings wheels have been fetched (CI's setup does
it: ``python scripts/tensorrt_api_names.py fetch``), against the wheels themselves, which also proves the
snapshot current. A removed API (``BuilderFlag.FP16``, ``int8_calibrator``, ``device_memory_size``) fails.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from nrp_deploy.tensorrt.support import TRT_OBJECTS, strongly_typed_flags

REPO = Path(__file__).resolve().parents[1]
TRT_MODULES = [
    REPO / "nrp_deploy" / "tensorrt" / "builder.py",
    REPO / "nrp_deploy" / "tensorrt" / "support.py",
    REPO / "nrp_deploy" / "runtime" / "backends" / "tensorrt.py",
]


def _load_names_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tensorrt_api_names", REPO / "scripts" / "tensorrt_api_names.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


names_script = _load_names_script()
SNAPSHOT = names_script.read_snapshot()


def _chain(node: ast.AST) -> list[str] | None:
    """``trt.A.B`` -> ["A", "B"]; None when the expression is not rooted at the name ``trt``."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt":
        return parts[::-1]
    return None


def _owner_class(node: ast.AST) -> str | None:
    """The bindings class of a variable named as in TRT_OBJECTS (``engine``, ``self._context``...)."""
    if isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Attribute):
        name = node.attr
    else:
        return None
    return TRT_OBJECTS.get(name.lstrip("_"))


def used_names(source: str) -> tuple[set[str], set[str]]:
    """(required, optional) binding names a module's source uses; optional ones go through getattr."""
    required: set[str] = set()
    optional: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
        ):
            target, attr = node.args[0], node.args[1] if len(node.args) > 1 else None
            if isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                chain = _chain(target)
                owner = ".".join(chain) if chain is not None else _owner_class(target)
                if chain == []:
                    optional.add(attr.value)
                elif owner:
                    optional.add(f"{owner}.{attr.value}")
            continue
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if chain is not None:
            kept = []
            for part in chain:
                if part.startswith("__") and part != "__version__":
                    break
                kept.append(part)
            required.add(".".join(kept))
            continue
        owner = _owner_class(node.value)
        if owner is not None and not node.attr.startswith("__"):
            required.add(f"{owner}.{node.attr}")
    required.discard("")
    return required, optional


def missing_names(required: set[str], optional: set[str], releases: dict[str, set[str]]) -> list[str]:
    """Human-readable problems: a required name absent from a release, an optional one absent from all."""
    problems = []
    for version, names in releases.items():
        nested = {n.rsplit(".", 1)[0] for n in names if n.count(".") == 2}  # e.g. ILogger.Severity
        for name in sorted(required):
            parts = name.split(".")
            # Members are listed two levels deep, nested enums three; deeper parts are not TensorRT's.
            depth = 3 if ".".join(parts[:2]) in nested else 2
            checked = ".".join(parts[:depth])
            if checked not in names:
                problems.append(f"{checked} is missing from TensorRT {version}")
    for name in sorted(optional):
        if not any(name in names for names in releases.values()):
            problems.append(f"{name} (optional) exists in no supported release")
    return problems


def _code_names() -> tuple[set[str], set[str]]:
    required: set[str] = set()
    optional: set[str] = set()
    for path in TRT_MODULES:
        r, o = used_names(path.read_text(encoding="utf-8"))
        required |= r
        optional |= o
    return required, optional


def test_snapshot_covers_both_majors():
    majors = {v.split(".")[0] for v in SNAPSHOT}
    assert majors == {"10", "11"}
    assert "10.3.0" in SNAPSHOT  # JetPack 6


def test_scanner_sees_the_calls_that_matter():
    required, _ = _code_names()
    for name in (
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
        "Builder.build_serialized_network",
        "IBuilderConfig.set_memory_pool_limit",
        "IBuilderConfig.builder_optimization_level",
        "IOptimizationProfile.set_shape",
        "IBuilderConfig.set_timing_cache",
        "Runtime.deserialize_cuda_engine",
        "IExecutionContext.set_input_shape",
        "IExecutionContext.set_tensor_address",
        "IExecutionContext.execute_async_v3",
    ):
        assert name in required


def test_every_tensorrt_name_in_the_code_exists_in_every_supported_release():
    required, optional = _code_names()
    assert missing_names(required, optional, SNAPSHOT) == []


def test_object_table_names_real_classes():
    for version, names in SNAPSHOT.items():
        for cls in TRT_OBJECTS.values():
            assert cls in names, f"{cls} not in TensorRT {version}"


def test_removed_apis_fail_the_check():
    snippet = """
config.set_flag(trt.BuilderFlag.FP16)
config.int8_calibrator = calibrator
size = engine.device_memory_size
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
fast = builder.platform_has_fast_fp16
level = getattr(trt.HardwareCompatibilityLevel, "NO_SUCH_LEVEL", None)
"""
    required, optional = used_names(snippet)
    problems = missing_names(required, optional, {"11.4.0.106": SNAPSHOT["11.4.0.106"]})
    for name in (
        "BuilderFlag.FP16",
        "IBuilderConfig.int8_calibrator",
        "ICudaEngine.device_memory_size",
        "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
        "Builder.platform_has_fast_fp16",
    ):
        assert f"{name} is missing from TensorRT 11.4.0.106" in problems
    assert "HardwareCompatibilityLevel.NO_SUCH_LEVEL (optional) exists in no supported release" in problems
    # The same names are fine in 10.3, which still had them.
    problems_10 = missing_names(required, set(), {"10.3.0": SNAPSHOT["10.3.0"]})
    assert problems_10 == []


@pytest.mark.parametrize("bit", [0, 1])
def test_strongly_typed_flag_is_looked_up_not_hard_coded(bit):
    fake = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=bit))
    assert strongly_typed_flags(fake) == 1 << bit


def _fetched_wheels() -> dict[str, Path]:
    directory = names_script.default_dir()
    return {v: w for v in names_script.VERSIONS if (w := names_script.wheel_for(v, directory)) is not None}


@pytest.mark.skipif(
    not _fetched_wheels(),
    reason="TensorRT bindings wheels not fetched (python scripts/tensorrt_api_names.py fetch); "
    "the committed snapshot was checked instead",
)
def test_real_bindings_match_snapshot_and_code():
    listed = {}
    for version, wheel in _fetched_wheels().items():
        result = names_script.list_names(wheel)
        assert result["version"] == version
        listed[version] = set(result["names"])
        assert listed[version] == SNAPSHOT[version], (
            f"the snapshot of {version} is stale: run python scripts/tensorrt_api_names.py snapshot"
        )
    required, _ = _code_names()  # optional names: checked against all releases in the snapshot test
    assert missing_names(required, set(), listed) == []
