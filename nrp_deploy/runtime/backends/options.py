"""Typed options of the backends: one frozen dataclass per backend, checked where they are made.

``load_purifier(..., options=...)`` takes one of these, or a plain mapping of the same names (checked
against the dataclass's fields: an unknown name is an ``InputError`` that lists the known ones). Options of
another backend are ``BackendUnavailableError``, so ``backend="auto"`` moves on to the backend they are for;
a mapping is read that way by TensorRT, which ``auto`` tries first, for the names only other backends take.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from nrp_deploy.artifacts.specs import ShapeProfile, make_profile
from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.tensorrt.engine import BuildOptions

Options = TypeVar("Options", bound="BackendOptions")


@dataclass(frozen=True)
class BackendOptions:
    """What every backend takes: ``threads``, the intra-op CPU threads (ONNX Runtime, torch; TensorRT runs
    on the GPU and ignores it). Each backend's options add their own fields."""

    backend: ClassVar[str] = "any"
    threads: int | None = None

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls: type[Options], options: Mapping[str, Any]) -> Options:
        """These options from a mapping of field names; an unknown name is an ``InputError``."""
        unknown = set(options) - cls.names()
        if unknown:
            raise InputError(
                f"unknown {cls.backend} backend option(s) {sorted(unknown)}; known: {sorted(cls.names())}"
            )
        return cls(**options)

    @classmethod
    def coerce(cls: type[Options], options: BackendOptions | Mapping[str, Any] | None) -> Options:
        """These options from what a caller gave: none, the common ``BackendOptions`` (widened), this
        backend's own, or a mapping; another backend's options are ``BackendUnavailableError``."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if type(options) is BackendOptions:
            return cls(threads=options.threads)
        if isinstance(options, BackendOptions):
            raise BackendUnavailableError(
                f"{type(options).__name__} are options of the {options.backend} backend, not {cls.backend}"
            )
        return cls.from_mapping(options)

    def with_threads(self: Options, threads: int | None) -> Options:
        """The same options with ``threads`` set, when it is given."""
        return self if threads is None else dataclasses.replace(self, threads=threads)


@dataclass(frozen=True)
class OrtOptions(BackendOptions):
    """ONNX Runtime: ``execution_provider`` (``cpu``, ``cuda``, ``tensorrt``; default: the device's),
    ``cuda_graph`` with a ``fixed_shape`` (batch, height, width), a caller's CUDA ``stream`` to compute on,
    and extra ``provider_options`` for the GPU execution provider."""

    backend: ClassVar[str] = "onnxruntime"
    execution_provider: str | None = None
    cuda_graph: bool = False
    fixed_shape: tuple[int, int, int] | None = None
    stream: int | None = None
    provider_options: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """The torch backend: ``channels_last`` memory layout, ``compile`` with torch.compile."""

    backend: ClassVar[str] = "torch"
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class OpenVinoOptions(BackendOptions):
    """OpenVINO on the CPU: ``inference_precision="bf16"`` runs an FP32 model's arithmetic in BF16 (CPUs
    with AVX512-BF16 or AMX); None runs the model at its own precision."""

    backend: ClassVar[str] = "openvino"
    inference_precision: str | None = None

    def __post_init__(self) -> None:
        if self.inference_precision not in (None, "bf16"):
            raise InputError(f"inference_precision must be None or 'bf16', not {self.inference_precision!r}")


@dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    """TensorRT: the ``engine`` path (built there when missing or stale), the ``cache_dir`` of engines built
    on demand, the build's shape ``profile`` (a ``ShapeProfile`` or a mapping with min / opt / max) or a
    ``fixed_shape`` (batch, height, width), ``optimization_level``, ``workspace_mib``, ``cuda_graph``
    capture (on by default) and ``verbose`` builds."""

    backend: ClassVar[str] = "tensorrt"
    engine: str | os.PathLike[str] | None = None
    cache_dir: str | os.PathLike[str] | None = None
    profile: ShapeProfile | Mapping[str, Sequence[int]] | None = None
    fixed_shape: tuple[int, int, int] | None = None
    optimization_level: int | None = None
    workspace_mib: int | None = None
    cuda_graph: bool = True
    verbose: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> TensorRTOptions:
        """As for every backend, but names only other backends take mean "not TensorRT", so ``auto`` moves
        on to ONNX Runtime or torch with them."""
        others = (OrtOptions.names() | TorchOptions.names() | OpenVinoOptions.names()) - cls.names()
        foreign = set(options) & others
        if foreign:
            raise BackendUnavailableError(
                f"option(s) {sorted(foreign)} belong to another backend, not tensorrt"
            )
        return super().from_mapping(options)

    def build_options(self) -> BuildOptions | None:
        """The engine's build options, or None when none was given (an existing engine keeps its own)."""
        if all(
            v is None for v in (self.profile, self.fixed_shape, self.optimization_level, self.workspace_mib)
        ):
            return None
        if self.profile is not None and self.fixed_shape is not None:
            raise InputError("give either a profile or a fixed_shape, not both")
        profile = self.profile
        if isinstance(profile, Mapping):
            profile = make_profile(profile.get("min"), profile.get("opt"), profile.get("max"))
        elif isinstance(profile, ShapeProfile):
            profile = make_profile(profile.min, profile.opt, profile.max)
        elif profile is None and self.fixed_shape is not None:
            shape = tuple(self.fixed_shape)
            profile = make_profile(shape, shape, shape)
        elif profile is not None:
            raise InputError(f"profile must be a ShapeProfile or a mapping with min/opt/max, not {profile!r}")
        defaults = BuildOptions()
        return BuildOptions(
            profile=profile or defaults.profile,
            optimization_level=int(
                defaults.optimization_level if self.optimization_level is None else self.optimization_level
            ),
            workspace_mib=int(defaults.workspace_mib if self.workspace_mib is None else self.workspace_mib),
        )
