"""TensorRT engine bookkeeping that needs neither TensorRT nor a GPU: profiles, metadata, staleness, cache.

A serialized engine runs only under the TensorRT release that built it (or a later one of the same major
when built version-compatible), only on GPUs of the compute capability it was built for (or Ampere and
later when built hardware-compatible), on the same CPU platform, and it stands for exactly one ONNX file.
Every engine therefore carries a sidecar ``<engine>.json`` (``EngineMetadata``) recording all of that,
and ``stale_reasons`` compares it with the machine at hand (``TargetEnvironment``). ``ensure_engine``
turns that into the cache policy of ``load_purifier(..., backend="tensorrt")``: reuse a fresh engine,
rebuild a stale one when its ONNX is at hand, and otherwise refuse with the reasons
(``StaleArtifactError``). The decisions are plain functions of plain data, so CI tests them without
TensorRT; the builder itself is passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nrp_deploy.errors import InputError, MetadataError, ModelNotFoundError, StaleArtifactError
from nrp_deploy.export.metadata import Verdict, read_sidecar, sidecar_path
from nrp_deploy.fileutil import sha256_file, write_json_atomic
from nrp_deploy.runtime.backends.base import ShapeProfile

FORMAT = "nrp-deploy/tensorrt-engine"
FORMAT_VERSION = 1
ENGINE_SUFFIX = ".engine"

#: For 224x224 work: TensorRT tunes its kernels for ``opt`` (one 224x224 image, also the tile size for
#: larger images), accepts anything from 32x32 up to 448x448 directly and batches of up to 8. ``max``
#: sizes the engine's activation memory, so it is kept modest for edge GPUs; larger images are tiled.
DEFAULT_PROFILE = ShapeProfile(min=(1, 32, 32), opt=(1, 224, 224), max=(8, 448, 448))
#: TensorRT's own default builder optimisation level (0 = fastest build .. 5 = most tactics tried).
DEFAULT_OPT_LEVEL = 3
DEFAULT_WORKSPACE_MIB = 2048
#: ``hardware_compatibility`` values: "none" (this compute capability only) or "ampere_plus" (sm_80+).
HARDWARE_COMPATIBILITY = ("none", "ampere_plus")

_BHW = re.compile(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*")


def parse_bhw(text: str, what: str = "shape") -> tuple[int, int, int]:
    """'8x224x224' -> (8, 224, 224): batch, height, width, all positive."""
    match = _BHW.fullmatch(text)
    if match is None:
        raise InputError(f"{what} {text!r} must be BATCHxHEIGHTxWIDTH, e.g. 1x224x224")
    shape = (int(match[1]), int(match[2]), int(match[3]))
    if min(shape) < 1:
        raise InputError(f"{what} {text!r} must be positive in every dimension")
    return shape


def make_profile(
    min_shape: Sequence[int] | None = None,
    opt_shape: Sequence[int] | None = None,
    max_shape: Sequence[int] | None = None,
) -> ShapeProfile:
    """A profile from optional (batch, height, width) triples; missing ones come from ``DEFAULT_PROFILE``.

    Raises ``InputError`` naming the triple that breaks min <= opt <= max, so a CLI typo reads clearly.
    """
    shapes = {}
    for key, given in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        shape = tuple(int(v) for v in (given if given is not None else getattr(DEFAULT_PROFILE, key)))
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"{key} shape {shape} must be three positive numbers (batch, height, width)")
        shapes[key] = shape
    for axis, label in enumerate(("batch", "height", "width")):
        lo, mid, hi = (shapes[k][axis] for k in ("min", "opt", "max"))
        if not lo <= mid <= hi:
            raise InputError(
                f"profile {label} must satisfy min <= opt <= max, got min={shapes['min']} "
                f"opt={shapes['opt']} max={shapes['max']}"
            )
    return ShapeProfile(min=shapes["min"], opt=shapes["opt"], max=shapes["max"])


def outside_profile(profile: ShapeProfile, batch: int, height: int, width: int) -> str | None:
    """Why an engine with ``profile`` cannot take this (batch, height, width) as is; None if it can."""
    shape = (batch, height, width)
    if all(lo <= v <= hi for lo, v, hi in zip(profile.min, shape, profile.max, strict=True)):
        return None
    lo, hi = profile.min, profile.max
    return (
        f"shape (batch {batch}, {height}x{width}) is outside the engine's profile: batch {lo[0]}..{hi[0]}, "
        f"{lo[1]}x{lo[2]}..{hi[1]}x{hi[2]}"
    )


def profile_to_dict(profile: ShapeProfile) -> dict[str, list[int]]:
    return {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}


def profile_from_dict(data: dict[str, Any]) -> ShapeProfile:
    return make_profile(data["min"], data["opt"], data["max"])


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
    if data.get("format_version") != FORMAT_VERSION:
        raise MetadataError(
            f"{path} has metadata format version {data.get('format_version')!r}; this nrp-deploy reads "
            f"{FORMAT_VERSION}: rebuild the engine with `nrp build`"
        )
    try:
        metadata = EngineMetadata.from_dict(data)
        metadata.shape_profile  # noqa: B018 - validates the recorded profile
        metadata.verdict  # noqa: B018 - and the recorded verdict
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise MetadataError(f"{path}: malformed engine metadata ({type(exc).__name__}: {exc})") from exc
    return metadata


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
    elif cc_built != cc_here:
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


def cache_key(onnx_sha256: str, options: BuildOptions, env: TargetEnvironment) -> str:
    """A short hash of everything an engine depends on; two builds share a key only if interchangeable.

    The GPU enters through its compute capability (not its name): TensorRT engines are portable across
    GPUs of one compute capability, and a cache shared by identical boards should hit.
    """
    key = {
        "format_version": FORMAT_VERSION,
        "onnx_sha256": onnx_sha256,
        "profile": profile_to_dict(options.profile),
        "optimization_level": options.optimization_level,
        "workspace_mib": options.workspace_mib,
        "version_compatible": options.version_compatible,
        "hardware_compatibility": options.hardware_compatibility,
        "tensorrt_version": env.tensorrt_version,
        "compute_capability": list(env.compute_capability),
        "platform": env.platform,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where engines built on demand live: ``tensorrt/`` in the runtime's artifact cache."""
    from nrp_deploy.runtime.artifacts import cache_dir as artifact_cache_dir

    return artifact_cache_dir() / "tensorrt"


def cached_engine_path(onnx: Path, key: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / f"{onnx.stem}-{key}{ENGINE_SUFFIX}"


def timing_cache_path(env: TargetEnvironment, directory: Path | None = None) -> Path:
    """One timing cache per TensorRT release and compute capability, beside the engine cache.

    TensorRT refuses a timing cache from another device or release, so keeping them apart means every
    build reuses the timings of earlier builds on the same kind of GPU.
    """
    major, minor = env.compute_capability
    name = f"timing-trt{env.tensorrt_version}-sm{major}{minor}-{env.platform}.cache"
    return (directory or cache_dir()) / name


#: The builder ``ensure_engine`` calls: (onnx, engine path, options) -> the metadata it wrote.
EngineBuilder = Callable[[Path, Path, BuildOptions], EngineMetadata]


@dataclass(frozen=True)
class EngineChoice:
    """The engine to run, its metadata, and why it was (re)built (empty when an existing one was reused)."""

    path: Path
    metadata: EngineMetadata
    built: bool
    reasons: tuple[str, ...] = ()


def options_from_metadata(metadata: EngineMetadata) -> BuildOptions:
    """The build options an existing engine was made with, so that a rebuild keeps them."""
    return BuildOptions(
        profile=metadata.shape_profile,
        optimization_level=metadata.optimization_level,
        workspace_mib=metadata.workspace_mib,
        version_compatible=metadata.version_compatible,
        hardware_compatibility=metadata.hardware_compatibility,
    )


def ensure_engine(
    *,
    env: TargetEnvironment,
    build: EngineBuilder,
    onnx: str | os.PathLike[str] | None = None,
    engine: str | os.PathLike[str] | None = None,
    options: BuildOptions | None = None,
    directory: Path | None = None,
    check_onnx: Callable[[Path], None] | None = None,
) -> EngineChoice:
    """The engine to run for ``onnx`` and/or ``engine`` on ``env``, building it only when needed.

    - ``onnx`` alone: the engine lives in the cache under ``cache_key`` (``directory``, default
      ``cache_dir()``); it is built on first use and whenever it is missing, stale, unverifiable or corrupt.
    - ``engine`` (with or without ``onnx``): used if its metadata says it fits here and, when ``onnx`` is
      given, was built from that very file. Otherwise it is rebuilt in place from ``onnx``, or from the
      ONNX its metadata names if that file still exists; with no ONNX at hand, ``StaleArtifactError``
      gives the reasons. A rebuild keeps the engine's recorded build options unless ``options`` is given.
    The builder writes engine and sidecar atomically, so an interrupted build never leaves a torn engine.
    ``check_onnx`` is called with the ONNX before any build and may raise (a FAIL fidelity verdict), so a
    build that could only end in a refusal is never started.
    """
    onnx_path = Path(onnx) if onnx is not None else None
    if onnx_path is not None and not onnx_path.is_file():
        raise ModelNotFoundError(f"ONNX model {onnx_path} does not exist")
    onnx_sha = sha256_file(onnx_path) if onnx_path is not None else None
    if engine is not None:
        engine_path = Path(engine)
    elif onnx_path is not None and onnx_sha is not None:
        engine_path = cached_engine_path(
            onnx_path, cache_key(onnx_sha, options or BuildOptions(), env), directory
        )
    else:
        raise InputError("ensure_engine needs an ONNX model, an engine, or both")

    if not engine_path.is_file():
        if onnx_path is None:
            raise ModelNotFoundError(f"TensorRT engine {engine_path} does not exist")
        if check_onnx is not None:
            check_onnx(onnx_path)
        built = build(onnx_path, engine_path, options or BuildOptions())
        return EngineChoice(engine_path, built, True, ("no engine yet",))

    metadata: EngineMetadata | None
    try:
        metadata = read_engine_metadata(engine_path)
        reasons = stale_reasons(metadata, env, onnx_sha256=onnx_sha, engine_sha256=sha256_file(engine_path))
    except MetadataError as exc:
        metadata, reasons = None, [str(exc)]
    if metadata is not None and not reasons:
        return EngineChoice(engine_path, metadata, False)

    if onnx_path is None and metadata is not None and Path(metadata.onnx_path).is_file():
        onnx_path = Path(metadata.onnx_path)  # the engine's own recorded source
    if onnx_path is None:
        raise StaleArtifactError(
            f"TensorRT engine {engine_path} cannot be used on {env.describe()}: "
            + "; ".join(reasons)
            + ". Rebuild it from its ONNX with `nrp build`, or pass the ONNX model instead"
        )
    if options is None:
        options = options_from_metadata(metadata) if metadata is not None else BuildOptions()
    if check_onnx is not None:
        check_onnx(onnx_path)
    return EngineChoice(engine_path, build(onnx_path, engine_path, options), True, tuple(reasons))
