"""What a TensorRT engine is tied to, and whether it may run here: its sidecar, its build options, staleness.

A serialized engine runs only under the TensorRT release that built it (or a later one of the same major
when built version-compatible), only on the GPU model it was built for (or Ampere and later when built
hardware-compatible): TensorRT warns that a plan run on another model of the same compute capability (an
H100 plan on an H200, an A100 one on an A30) may be slow or fail, since its tactics were timed there, on the same CPU platform, and it stands for exactly one ONNX file.
Every engine therefore carries a sidecar ``<engine>.json`` (``EngineMetadata``) recording all of that,
and ``stale_reasons`` compares it with the machine at hand (``TargetEnvironment``). Plain functions of
plain data, so CI tests them without TensorRT or a GPU.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nrp_deploy.artifacts.metadata import Verdict, read_sidecar, sidecar_path
from nrp_deploy.artifacts.specs import DEFAULT_PROFILE, ShapeProfile, profile_from_dict
from nrp_deploy.errors import InputError, MetadataError
from nrp_deploy.fileutil import write_json_atomic

FORMAT = "nrp-deploy/tensorrt-engine"
#: 2 records the builder's TF32 policy (``EngineMetadata.tf32``). Version 1 sidecars are still read, so
#: that their engines are rebuilt from the recorded ONNX and options (or refused with the reason), never run.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
ENGINE_SUFFIX = ".engine"

#: TensorRT's own default builder optimisation level (0 = fastest build .. 5 = most tactics tried).
DEFAULT_OPT_LEVEL = 3
DEFAULT_WORKSPACE_MIB = 2048
#: ``hardware_compatibility`` values: "none" (this GPU model only) or "ampere_plus" (sm_80+).
HARDWARE_COMPATIBILITY = ("none", "ampere_plus")


@dataclass(frozen=True)
class TargetEnvironment:
    """What an engine is tied to on the machine at hand: TensorRT release, GPU and CPU platform."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    platform: str = field(default_factory=lambda: f"{platform.system()}-{platform.machine()}")

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (sm_{major}{minor}, {self.platform})"


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the ONNX and the machine that changes the engine TensorRT builds."""

    profile: ShapeProfile = DEFAULT_PROFILE
    optimization_level: int = DEFAULT_OPT_LEVEL
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    version_compatible: bool = False
    hardware_compatibility: str = "none"

    def __post_init__(self) -> None:
        if not 0 <= self.optimization_level <= 5:
            raise InputError(f"builder optimisation level must be 0..5, got {self.optimization_level}")
        if self.workspace_mib < 1:
            raise InputError(f"workspace must be at least 1 MiB, got {self.workspace_mib}")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise InputError(
                f"hardware compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                f"got {self.hardware_compatibility!r}"
            )


@dataclass
class EngineMetadata:
    """The sidecar ``<engine>.json``: what the engine was built from, with what, for which machine."""

    engine_sha256: str
    onnx_path: str
    onnx_sha256: str
    precision: str
    profile: dict[str, list[int]]
    input_name: str
    input_dtype: str
    output_name: str
    output_dtype: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: list[int]
    platform: str
    optimization_level: int
    workspace_mib: int
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    #: The builder policy: whether TensorRT could pick TF32 tactics (it may by default), which round FP32
    #: convolution inputs to 10 mantissa bits. None: not recorded (format 1), so not known.
    tf32: bool | None = None
    build_seconds: float = 0.0
    built_at: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineMetadata:
        return cls(**data)

    @property
    def shape_profile(self) -> ShapeProfile:
        return profile_from_dict(self.profile)

    @property
    def verdict(self) -> Verdict | None:
        """The fidelity verdict of the ONNX the engine was built from; None when that ONNX had no sidecar."""
        recorded = self.source.get("verdict")
        return None if recorded is None else Verdict(**recorded)


def write_engine_metadata(engine: str | os.PathLike[str], metadata: EngineMetadata) -> Path:
    path = sidecar_path(engine)
    write_json_atomic(path, metadata.to_dict())
    return path


def read_engine_metadata(engine: str | os.PathLike[str]) -> EngineMetadata:
    """The engine's sidecar; ``MetadataError`` naming the file when it is missing, unreadable or foreign."""
    path, data = read_sidecar(engine, made_by="build engines with `nrp build`")
    if data.get("format") != FORMAT:
        raise MetadataError(f"{path} is not TensorRT engine metadata (no format {FORMAT!r})")
    if data.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise MetadataError(
            f"{path} has metadata format version {data.get('format_version')!r}; this nrp-deploy reads "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}: rebuild the engine with `nrp build`"
        )
    try:
        metadata = EngineMetadata.from_dict(data)
        metadata.shape_profile  # noqa: B018 - validates the recorded profile
        metadata.verdict  # noqa: B018 - and the recorded verdict
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise MetadataError(f"{path}: malformed engine metadata ({type(exc).__name__}: {exc})") from exc
    return metadata


def options_from_metadata(metadata: EngineMetadata) -> BuildOptions:
    """The build options an existing engine was made with, so that a rebuild keeps them."""
    return BuildOptions(
        profile=metadata.shape_profile,
        optimization_level=metadata.optimization_level,
        workspace_mib=metadata.workspace_mib,
        version_compatible=metadata.version_compatible,
        hardware_compatibility=metadata.hardware_compatibility,
    )


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def stale_reasons(
    metadata: EngineMetadata,
    env: TargetEnvironment,
    *,
    onnx_sha256: str | None = None,
    engine_sha256: str | None = None,
) -> list[str]:
    """Why the engine described by ``metadata`` must not run here; empty when it may.

    ``onnx_sha256`` is the ONNX at hand (when there is one) and ``engine_sha256`` the engine file's actual
    hash; either check is skipped when None.
    """
    reasons: list[str] = []
    if metadata.tf32 is None:
        reasons.append(
            f"its metadata (format version {metadata.format_version}) does not record whether TensorRT could "
            "use TF32, and engines built before nrp-deploy recorded it ran FP32 convolutions in TF32"
        )
    elif metadata.tf32 and metadata.precision == "fp32":
        reasons.append("an FP32 engine built with TF32 allowed (convolution inputs rounded to 10 bits)")
    built, running = metadata.tensorrt_version, env.tensorrt_version
    if metadata.version_compatible:
        b, r = _version_tuple(built), _version_tuple(running)
        if b[:1] != r[:1] or r < b:
            reasons.append(
                f"built version-compatible by TensorRT {built}, which runs only under TensorRT "
                f"{b[0]}.x from {built} on; this is TensorRT {running}"
            )
    elif built != running:
        reasons.append(f"built by TensorRT {built}; this is TensorRT {running}")
    cc_built = tuple(metadata.compute_capability)
    cc_here = tuple(env.compute_capability)
    if metadata.hardware_compatibility == "ampere_plus":
        if cc_here < (8, 0):
            reasons.append(
                f"built for Ampere and later GPUs (sm_80+); {env.gpu_name} is sm_{cc_here[0]}{cc_here[1]}"
            )
    elif cc_built != cc_here or metadata.gpu_name != env.gpu_name:
        reasons.append(
            f"built for {metadata.gpu_name} (sm_{cc_built[0]}{cc_built[1]}); this GPU is {env.gpu_name} "
            f"(sm_{cc_here[0]}{cc_here[1]})"
        )
    if metadata.platform != env.platform:
        reasons.append(f"built on {metadata.platform}; this machine is {env.platform}")
    if onnx_sha256 is not None and onnx_sha256 != metadata.onnx_sha256:
        reasons.append(
            f"built from an ONNX with sha256 {metadata.onnx_sha256[:12]}..; the ONNX now has "
            f"{onnx_sha256[:12]}.. (it changed)"
        )
    if engine_sha256 is not None and engine_sha256 != metadata.engine_sha256:
        reasons.append(
            f"the engine file's sha256 is {engine_sha256[:12]}.., its metadata describes "
            f"{metadata.engine_sha256[:12]}.. (the file was replaced or corrupted)"
        )
    return reasons
