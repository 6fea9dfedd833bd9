"""Build a TensorRT engine from the FP32, mixed FP16 or INT8 Q/DQ ONNX (``nrp build``). Torch-free.

Precision lives in the ONNX, not in builder flags: TensorRT 11 removed the FP16/INT8 flags and its
calibrators, so the network is parsed strongly typed (10.x gets the flag, looked up by name; 11.x is
strongly typed always) and TensorRT keeps every tensor in the type the ONNX gives it: an AutoCast FP16
model builds an FP16 engine, a Q/DQ model an INT8 one, and an FP32 model an FP32 engine. The precision
recorded in the engine's metadata is read off the parsed network, so it says what the engine really is.

FP32 engines are built with TF32 off: TensorRT enables TF32 tensor-core convolutions by default, which
round their inputs to 10 mantissa bits and cost FP32 engines their fidelity to the FP32 reference (the
ONNX Runtime backend turns TF32 off for FP32 too). The build runs on the device it is asked for: its
primary context is made current for the build, since TensorRT builds on the current device.

One optimisation profile covers (batch, height, width) from ``min`` to ``max``, tuned for ``opt``. Timings
go to a cache on disk (one per TensorRT release and GPU model) that later builds reuse, which cuts the
rebuilds the engine cache triggers after a TensorRT upgrade or an ONNX change to a fraction.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.artifacts.metadata import read_metadata
from nrp_deploy.artifacts.specs import profile_to_dict
from nrp_deploy.errors import ExportError, InputError, MetadataError
from nrp_deploy.fileutil import sha256_file, write_bytes_atomic
from nrp_deploy.kernels.cuda_mem import current_device
from nrp_deploy.tensorrt.cache import EngineBuilder, timing_cache_path
from nrp_deploy.tensorrt.engine import ENGINE_SUFFIX, BuildOptions, EngineMetadata, write_engine_metadata
from nrp_deploy.tensorrt.support import (
    check_build_options,
    current_environment,
    import_tensorrt,
    strongly_typed_flags,
    tensorrt_logger,
)

CHANNELS = 3


def classify_precision(layer_types: Iterable[str], tensor_dtypes: Iterable[str]) -> str:
    """The engine precision a strongly typed network implies: int8 with Q/DQ, fp16 with any half tensor.

    ``layer_types`` / ``tensor_dtypes`` are the names of TensorRT's LayerType / DataType members.
    """
    if "QUANTIZE" in set(layer_types):
        return "int8"
    return "fp16" if "HALF" in set(tensor_dtypes) else "fp32"


def default_engine_path(onnx: Path) -> Path:
    return onnx.with_suffix(ENGINE_SUFFIX)


def _onnx_source(onnx: Path) -> dict[str, Any]:
    """What the export recorded about the ONNX (checkpoint, architecture, precision, fidelity verdict), if it
    has a sidecar. The engine inherits the verdict: it computes what its ONNX computes."""
    try:
        meta = read_metadata(onnx)
    except MetadataError:
        return {}
    return {
        "onnx_precision": meta.precision,
        "checkpoint": meta.source,
        "model": meta.model,
        "verdict": asdict(meta.verdict),
    }


def _nchw(shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    batch, height, width = shape
    return (batch, CHANNELS, height, width)


def _dtype_name(trt: Any, dtype: Any) -> str:
    return np.dtype(trt.nptype(dtype)).name


def build_engine(
    onnx: str | os.PathLike[str],
    engine: str | os.PathLike[str] | None = None,
    options: BuildOptions | None = None,
    *,
    expect_precision: str | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    use_timing_cache: bool = True,
    device: int = 0,
    verbose: bool = False,
    overwrite: bool = False,
) -> EngineMetadata:
    """Build ``engine`` (default: the ONNX path with ``.engine``) and its sidecar; return the metadata.

    ``expect_precision`` (fp32 / fp16 / int8) refuses an ONNX of another precision with the command that
    makes the right one, since TensorRT 11 gives no other way to change it. ``timing_cache`` defaults to
    the per-release, per-GPU file beside the engine cache; ``use_timing_cache=False`` builds without one.
    An existing engine is replaced only with ``overwrite``. ``device`` is the CUDA ordinal to build on
    (and for). Options this GPU cannot honour (hardware compatibility on a Jetson) raise ``InputError``
    before anything is built. Raises ``ExportError`` with TensorRT's own messages when parsing or building
    fails.
    """
    options = options or BuildOptions()
    onnx_path = Path(onnx)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model {onnx_path} does not exist")
    engine_path = Path(engine) if engine is not None else default_engine_path(onnx_path)
    if engine_path.exists() and not overwrite:
        raise InputError(f"{engine_path} exists; pass overwrite=True (nrp build --overwrite) to replace it")
    trt = import_tensorrt()
    env = current_environment(device)
    check_build_options(options, env)
    with current_device(device):
        return _build(
            trt,
            env,
            onnx_path,
            engine_path,
            options,
            expect_precision,
            timing_cache,
            use_timing_cache,
            verbose,
        )


def _build(
    trt: Any,
    env: Any,
    onnx_path: Path,
    engine_path: Path,
    options: BuildOptions,
    expect_precision: str | None,
    timing_cache: str | os.PathLike[str] | None,
    use_timing_cache: bool,
    verbose: bool,
) -> EngineMetadata:
    """``build_engine``'s work, on the device whose context is current."""
    logger = tensorrt_logger()
    logger.verbose = verbose
    logger.take_errors()

    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        details = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {details or logger.take_errors()}")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise ExportError(
            f"{onnx_path} has {network.num_inputs} inputs and {network.num_outputs} outputs; "
            "a purifier has one of each"
        )
    input_tensor, output_tensor = network.get_input(0), network.get_output(0)
    precision = _network_precision(trt, network)
    if expect_precision is not None and precision != expect_precision:
        raise ExportError(
            f"{onnx_path} is a {precision} model, not {expect_precision}: TensorRT builds the precision the "
            f"ONNX carries; make a {expect_precision} ONNX first with `nrp export {expect_precision}`"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    tf32 = precision != "fp32"
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    opt_profile = builder.create_optimization_profile()
    profile = options.profile
    opt_profile.set_shape(input_tensor.name, _nchw(profile.min), _nchw(profile.opt), _nchw(profile.max))
    config.add_optimization_profile(opt_profile)

    cache_file = Path(timing_cache) if timing_cache is not None else timing_cache_path(env)
    if use_timing_cache:
        _attach_timing_cache(config, cache_file)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}: {logger.take_errors()}")
    write_bytes_atomic(engine_path, memoryview(serialized))
    if use_timing_cache:
        _save_timing_cache(config, cache_file)

    metadata = EngineMetadata(
        engine_sha256=sha256_file(engine_path),
        onnx_path=str(onnx_path.resolve()),
        onnx_sha256=sha256_file(onnx_path),
        precision=precision,
        profile=profile_to_dict(profile),
        input_name=input_tensor.name,
        input_dtype=_dtype_name(trt, input_tensor.dtype),
        output_name=output_tensor.name,
        output_dtype=_dtype_name(trt, output_tensor.dtype),
        tensorrt_version=env.tensorrt_version,
        gpu_name=env.gpu_name,
        compute_capability=list(env.compute_capability),
        platform=env.platform,
        optimization_level=options.optimization_level,
        workspace_mib=options.workspace_mib,
        version_compatible=options.version_compatible,
        hardware_compatibility=options.hardware_compatibility,
        tf32=tf32,
        build_seconds=round(seconds, 3),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source=_onnx_source(onnx_path),
    )
    write_engine_metadata(engine_path, metadata)
    return metadata


def _network_precision(trt: Any, network: Any) -> str:
    layer_types: list[str] = []
    dtypes: list[str] = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layer_types.append(layer.type.name)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            dtypes.append(tensor.dtype.name)
    return classify_precision(layer_types, dtypes)


def _attach_timing_cache(config: Any, path: Path) -> None:
    """Start from the timings on disk; a cache TensorRT rejects (other GPU / release) is started afresh."""
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    timing_cache = config.create_timing_cache(data)
    if not config.set_timing_cache(timing_cache, False):
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, False)


def _save_timing_cache(config: Any, path: Path) -> None:
    timing_cache = config.get_timing_cache()
    if timing_cache is None:
        return
    with contextlib.suppress(OSError):  # a read-only cache directory only costs the next build its head start
        write_bytes_atomic(path, memoryview(timing_cache.serialize()))


def engine_builder(*, device: int = 0, verbose: bool = False) -> EngineBuilder:
    """``build_engine`` in the shape ``cache.ensure_engine`` calls its builder."""

    def build(onnx: Path, engine: Path, options: BuildOptions) -> EngineMetadata:
        return build_engine(onnx, engine, options, device=device, verbose=verbose, overwrite=True)

    return build
