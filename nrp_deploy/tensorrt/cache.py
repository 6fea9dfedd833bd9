"""The TensorRT engine cache: keys, paths, and the policy that reuses, rebuilds or refuses an engine.

``ensure_engine`` is the cache policy of ``load_purifier(..., backend="tensorrt")``: reuse a fresh engine,
rebuild a stale one when its ONNX is at hand, and otherwise refuse with the reasons
(``StaleArtifactError``); what makes an engine stale is ``engine.stale_reasons``. Engines built on demand
live in ``tensorrt/`` below the artifact cache, keyed by everything they depend on (``cache_key``), beside
one timing cache per TensorRT release and GPU model. The decisions need neither TensorRT nor a GPU, so CI
tests them; the builder itself is passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nrp_deploy.artifacts.cache import cache_dir as artifact_cache_dir
from nrp_deploy.artifacts.specs import profile_to_dict
from nrp_deploy.errors import InputError, MetadataError, ModelNotFoundError, StaleArtifactError
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.tensorrt.engine import (
    ENGINE_SUFFIX,
    FORMAT_VERSION,
    BuildOptions,
    EngineMetadata,
    TargetEnvironment,
    options_from_metadata,
    read_engine_metadata,
    stale_reasons,
)


def cache_key(onnx_sha256: str, options: BuildOptions, env: TargetEnvironment) -> str:
    """A short hash of everything an engine depends on; two builds share a key only if interchangeable.

    The GPU enters by its name as well as its compute capability: a plan is tuned for one GPU model, and
    TensorRT warns that it may be slow or fail on another model of the same compute capability. Identical
    boards share a name, so a cache shared by them still hits.
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
        "gpu_name": env.gpu_name,
        "compute_capability": list(env.compute_capability),
        "platform": env.platform,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where engines built on demand live: ``tensorrt/`` in the artifact cache."""
    return artifact_cache_dir() / "tensorrt"


def cached_engine_path(onnx: Path, key: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / f"{onnx.stem}-{key}{ENGINE_SUFFIX}"


def timing_cache_path(env: TargetEnvironment, directory: Path | None = None) -> Path:
    """One timing cache per TensorRT release and GPU model, beside the engine cache.

    Timings hold only for the GPU model they were measured on (and TensorRT refuses a cache from another
    device or release), so keeping them apart means every build reuses the timings of earlier builds on
    the same model.
    """
    major, minor = env.compute_capability
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", env.gpu_name).strip("-") or "gpu"
    name = f"timing-trt{env.tensorrt_version}-{gpu}-sm{major}{minor}-{env.platform}.cache"
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
