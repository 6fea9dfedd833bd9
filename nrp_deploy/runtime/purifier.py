"""The Purifier facade: images in, purified images out, over whichever backend runs fastest here.

``load_purifier`` resolves the model, picks and opens a backend (``auto``, ``runtime.auto``: on a CPU the
fastest backend and precision that pass their fidelity checks here, timed once per machine; on a GPU
TensorRT, then ONNX Runtime, then eager torch, first that works) and wraps it. A Purifier validates its input, applies
the dynamic defence if asked, batches, tiles images that are larger than the tile or than the engine's
shape profile allows, and hands the result back in the form it came in.

On a GPU backend (a ``DeviceBackend`` on ``cuda``) uint8 images take the fused path
(``runtime.gpu_pipeline.DevicePipeline``: pinned uint8 upload, one kernel for conversion, noise and
projection, the engine on device buffers, one kernel back to uint8) whenever no tiling is needed; float
input, tiled images, CPU backends, and GPUs where the kernels cannot load take the host path, whose numpy
arithmetic the kernels reproduce.

One instance may be called from several threads: pre/post-processing and tiling keep no state, a backend
that is not thread-safe (``backend.thread_safe`` False: ONNX Runtime's CUDA graphs, compiled torch) is
serialised with a lock (TensorRT locks itself), and the fused path serialises on its shared buffers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nrp_deploy.artifacts.sources import ModelSource, identify
from nrp_deploy.batch import BatchFn, by_index_runs
from nrp_deploy.errors import InputError, ModelError, NRPDeployError
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import memory, prepost
from nrp_deploy.runtime.auto import AutoChoice, open_chosen
from nrp_deploy.runtime.backends import Backend, DeviceBackend
from nrp_deploy.runtime.backends.options import BackendOptions
from nrp_deploy.runtime.dynamic import DynamicDefense
from nrp_deploy.runtime.tiling import TileConfig, infer_tiled

log = logging.getLogger(__name__)
#: Where the Purifier says that it tiles an image to stay within its memory budget (``nrp purify`` shows it).
autotile_log = logging.getLogger("nrp_deploy.runtime.autotile")

#: Largest image (height x width) a Purifier accepts: 8192 x 8192, about 0.8 GB as float32 input.
DEFAULT_MAX_PIXELS = 8192 * 8192
#: Context kept around every tile's output when tiling (see tiling.py and benchmarks/results/runtime_tiling.md).
DEFAULT_OVERLAP = 32
DEFAULT_FEATHER = 16
#: Smallest tile chosen for a memory budget: a 64 px core inside the default overlap and feather.
MIN_MEMORY_TILE = 2 * (DEFAULT_OVERLAP + DEFAULT_FEATHER // 2) + 64
#: Largest tile chosen for a memory budget. Beyond it a tile saves at most 18 % of the compute (its 944 px
#: core against the 1024 px it runs), and memory no longer falls reliably: ONNX Runtime's CPU arena grows
#: in powers of two, so 2160x2872 tiles of a 3840x2160 photo peaked at 11.3 GB, above the 7.1 GB of the
#: untiled image (benchmarks/results/auto_tiling_cpu.md).
MAX_MEMORY_TILE = 1024


class Purifier:
    """Callable purifier over one backend; build it with ``load_purifier``.

    ``tile`` (a TileConfig) tiles images larger than ``tile.tile`` on either side; without it, images are
    tiled only when the backend's shape profile cannot take them whole (then at the profile's optimal
    shape). ``max_batch`` bounds the images (or tiles) per backend call. ``fused``: use the fused GPU path
    for uint8 images (None: when the backend is on a GPU and the kernels load; True: insist).
    ``auto_choice``: what ``backend="auto"`` / ``precision="auto"`` chose and why (None when nothing was
    chosen by timing).
    ``memory_budget``: without ``tile``, images whose estimated activations (``runtime.memory``) exceed it
    are tiled, and equal-size images batched only as far as it allows (None: never for memory).
    """

    def __init__(
        self,
        backend: Backend,
        source: ModelSource | None = None,
        tile: TileConfig | None = None,
        max_batch: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fused: bool | None = None,
        auto_choice: AutoChoice | None = None,
        memory_budget: memory.MemoryBudget | None = None,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_pixels", max_pixels)):
            if value is not None and not _is_positive_int(value):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        self.backend = backend
        self.source = source
        self.tile = tile
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.auto_choice = auto_choice
        self.memory_budget = memory_budget
        self._lock = threading.Lock()
        backend.activate()
        self._pipeline = self._open_pipeline(fused)

    # -- what it is --------------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def spec(self) -> ModelSpec | None:
        """The architecture, when the registry, the artifact's metadata or the checkpoint says which."""
        return self.backend.spec or (self.source.spec if self.source else None)

    @property
    def receptive_field(self) -> int | None:
        return self.spec.receptive_field if self.spec else None

    def describe(self) -> str:
        model = self.spec.describe() if self.spec else "unknown architecture"
        origin = f" from {self.source.path}" if self.source else ""
        path = ", fused GPU path" if self._pipeline is not None else ""
        return f"{model}{origin} on {self.backend_name} ({self.precision}, {self.backend.device}{path})"

    def __repr__(self) -> str:
        return f"Purifier({self.describe()})"

    # -- lifetime ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the fused path's buffers and the backend's engine / session (no calls afterwards)."""
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        self.backend.deactivate()

    def __enter__(self) -> Purifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- purification ------------------------------------------------------------------------------------

    def __call__(self, images: Any, dynamic: DynamicDefense | None = None, start_index: int = 0) -> Any:
        """Purify ``images``: a uint8 NHWC batch, one uint8 HWC image, a PIL image, a float32 NCHW batch
        in [0, 1] (float32 out), or a list of images of any sizes (a list out, equal sizes batched).

        ``dynamic`` adds the dynamic defence's noise first; image ``k`` of the call is noise index
        ``start_index + k``, so chunks of a batch purified with the same seed match the whole batch.
        """
        if not _is_int(start_index) or start_index < 0:
            raise InputError(f"start_index must be an integer >= 0, got {start_index!r}")
        if dynamic is not None and not isinstance(dynamic, DynamicDefense):
            raise InputError(
                f"dynamic must be a DynamicDefense (e.g. DynamicDefense(sigma=0.05, eps=16/255)) or None, "
                f"got {dynamic!r}"
            )
        seed = dynamic.call_seed() if dynamic is not None else 0
        if isinstance(images, list | tuple):
            return self._call_many(images, dynamic, seed, start_index)
        prepared = prepost.prepare(images, self.max_pixels)
        return prepost.deliver(self._purify(prepared, dynamic, seed, start_index), prepared.kind)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Model output (unclamped float32 NCHW) for a validated float32 NCHW batch: batching and tiling."""
        count, _, height, width = x.shape
        prepost.check_size(height, width, self.max_pixels)
        config, min_shape = self._layout(height, width, announce=count)
        if config is None:
            step = min(self._batch_limit(count), self._images_within_budget(height, width, count))
            return np.concatenate([self._run(x[i : i + step]) for i in range(0, count, step)])
        return infer_tiled(x, self._run, config, min_shape=min_shape, tiles_per_call=self._tiles_per_call())

    def _purify(
        self, prepared: prepost.Prepared, dynamic: DynamicDefense | None, seed: int, start_index: int
    ) -> np.ndarray:
        """uint8 NHWC -> uint8 NHWC, or float32 NCHW -> clamped float32 NCHW; the GPU path when it can."""
        if prepared.is_uint8 and self._pipeline is not None:
            height, width = prepared.size
            if self._layout(height, width)[0] is None:
                return self._fused(prepared.batch, dynamic, seed, start_index)
        x = prepost.uint8_to_float(prepared.batch) if prepared.is_uint8 else prepared.batch
        if dynamic is not None:
            x = dynamic.apply(x, seed, start_index)
        y = self.infer(x)
        return prepost.float_to_uint8(y) if prepared.is_uint8 else np.clip(y, 0.0, 1.0)

    def _fused(
        self, images: np.ndarray, dynamic: DynamicDefense | None, seed: int, start_index: int
    ) -> np.ndarray:
        step = self._batch_limit(len(images))
        chunks = []
        for i in range(0, len(images), step):
            chunk = images[i : i + step]
            padded = _pad_batch(chunk, self._min_batch())
            out = self._pipeline(padded, dynamic, seed=seed, start_index=start_index + i)
            chunks.append(out[: len(chunk)])
        return np.concatenate(chunks)

    def _call_many(
        self, images: Sequence[Any], dynamic: DynamicDefense | None, seed: int, start_index: int
    ) -> list[Any]:
        """Equal sizes are batched together; with noise on, only runs of consecutive images, since a
        batch's noise indices are consecutive."""
        if not images:
            raise InputError("empty input: the list holds no image")
        prepared = [prepost.prepare(image, self.max_pixels) for image in images]
        if any(p.kind in (prepost.InputKind.NHWC_UINT8, prepost.InputKind.NCHW_FLOAT) for p in prepared):
            raise InputError("a list must hold single images (uint8 HWC arrays or PIL images), not batches")
        groups: dict[tuple[int, int], list[int]] = {}
        for k, p in enumerate(prepared):
            groups.setdefault(p.size, []).append(k)
        batches = [run for members in groups.values() for run in _runs(members, split=dynamic is not None)]
        results: list[Any] = [None] * len(images)
        for members in batches:
            batch = prepost.Prepared(
                np.concatenate([prepared[k].batch for k in members]), prepost.InputKind.NHWC_UINT8
            )
            out = self._purify(batch, dynamic, seed, start_index + members[0])
            for row, k in enumerate(members):
                results[k] = prepost.deliver(out[row : row + 1], prepared[k].kind)
        return results

    def as_batch_fn(self, dynamic: DynamicDefense | None = None) -> BatchFn:
        """The batch callable of ``nrp_deploy.batch.purify_files``: with ``dynamic``, every image gets the
        noise of its job index (``batch.by_index_runs``), so a seeded job replays exactly."""
        if dynamic is None:
            return lambda batch, indices: self(batch)
        return by_index_runs(lambda batch, start: self(batch, dynamic=dynamic, start_index=start))

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One backend call; a batch below the profile's smallest is padded up to it and the padding's
        outputs dropped, so a fixed-batch backend (a static engine, a CUDA-graph session) takes any count."""
        padded = _pad_batch(x, self._min_batch())
        if self.backend.thread_safe:
            y = self.backend.infer(padded)
        else:
            with self._lock:
                y = self.backend.infer(padded)
        self._check_output(padded, y)
        return y[: len(x)]

    def _check_output(self, x: np.ndarray, y: np.ndarray) -> None:
        """Refuse a model output that is not an image of the input's shape, or that holds NaN or infinity
        (non-finite weights, or an overflow in reduced precision): written out, it would be a black image."""
        model = f"the model{f' {self.source.path}' if self.source else ''} on {self.backend_name}"
        if y.shape != x.shape:
            raise ModelError(
                f"{model} returned shape {y.shape} for an input of shape {x.shape}: a purifier must return "
                "an image of its input's size with 3 channels"
            )
        if not (np.isfinite(y.min()) and np.isfinite(y.max())):  # NaN propagates; no full-size mask
            raise ModelError(
                f"{model} returned NaN or infinite values for an input of shape {x.shape} (non-finite "
                "weights, or an overflow at reduced precision); refusing to write them as an image"
            )

    def _open_pipeline(self, fused: bool | None) -> Any:
        """The fused GPU path over this backend, or None for the host path."""
        on_gpu = isinstance(self.backend, DeviceBackend) and self.backend.device.startswith("cuda")
        if fused is False or (fused is None and not on_gpu):
            return None
        if not on_gpu:
            raise InputError(f"the fused GPU path needs a CUDA device backend, not {self.backend_name}")
        from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

        try:
            return DevicePipeline(self.backend)
        except NRPDeployError as exc:
            if fused:
                raise
            log.warning("fused GPU path unavailable, using the host path: %s", exc)
            return None

    def _min_batch(self) -> int:
        profile = self.backend.profile
        return profile.min[0] if profile else 1

    def _batch_limit(self, count: int) -> int:
        profile = self.backend.profile
        return min(self.max_batch or count, profile.max[0] if profile else count)

    def _tiles_per_call(self) -> int:
        profile = self.backend.profile
        return min(self.max_batch or profile.opt[0], profile.max[0]) if profile else self.max_batch or 1

    def _layout(
        self, height: int, width: int, announce: int = 0
    ) -> tuple[TileConfig | None, tuple[int, int]]:
        """How an image of this size runs: (None, _) whole, or (tile config, minimum tile shape).

        Tiles come from the Purifier's own ``tile`` (capped at the profile's largest shape), or, when an
        image exceeds the profile, from the profile's optimal shape, or, when its estimated activations
        exceed the memory budget, from the largest tile within it, at most ``MAX_MEMORY_TILE`` (logged for
        ``announce`` images). An image smaller than the profile's minimum runs as one tile padded up to it.
        """
        profile = self.backend.profile
        config = self.tile
        min_shape = (1, 1)
        largest = None
        if profile is not None:
            min_shape = (profile.min[1], profile.min[2])
            largest = min(profile.max[1], profile.max[2])
            if config is not None and config.tile > largest:
                config = TileConfig(largest, config.overlap, config.feather, config.ramp)
            elif config is None and (height > profile.max[1] or width > profile.max[2]):
                config = _default_tile(min(profile.opt[1], profile.opt[2]))
        if config is None:
            config = self._memory_tile(height, width, largest, max(min_shape), announce)
        too_small = height < min_shape[0] or width < min_shape[1]
        if too_small and (config is None or (height <= config.tile and width <= config.tile)):
            return _default_tile(max(height, width, *min_shape)), min_shape
        if config is None or (height <= config.tile and width <= config.tile):
            return None, min_shape
        return config, min_shape

    def _estimate(self, height: int, width: int, images: int = 1) -> int | None:
        """Estimated activation bytes of ``images`` images in one call; None without a budget or a spec."""
        if self.memory_budget is None or self.spec is None:
            return None
        return memory.activation_bytes(self.spec, self.backend_name, height, width, images)

    def _images_within_budget(self, height: int, width: int, count: int) -> int:
        """How many of ``count`` whole images of this size one call may take within the memory budget (at
        least one)."""
        one = self._estimate(height, width)
        return max(1, min(count, self.memory_budget.bytes // one)) if one else count

    def _memory_tile(
        self, height: int, width: int, largest: int | None, smallest: int, announce: int
    ) -> TileConfig | None:
        """Tiles whose activations, ``_tiles_per_call`` at a time, fit the memory budget; None when the
        whole image fits it."""
        estimate = self._estimate(height, width)
        if estimate is None or estimate <= self.memory_budget.bytes:
            return None
        side, fits = memory.tile_side(
            self.spec,
            self.backend_name,
            self.memory_budget.bytes,
            self._tiles_per_call(),
            max(MIN_MEMORY_TILE, smallest),
            min(largest or MAX_MEMORY_TILE, MAX_MEMORY_TILE),
        )
        if side >= max(height, width):
            return None
        config = _default_tile(side)
        if announce:
            autotile_log.info(
                "%d image(s) of %dx%d (HxW): about %s of activations each on %s, over the %s: tiling at %d px "
                "(overlap %d px, feather %d px)%s",
                announce,
                height,
                width,
                memory.format_bytes(estimate),
                self.backend_name,
                self.memory_budget.describe(),
                side,
                config.overlap,
                config.feather,
                "" if fits else "; the smallest tile, still over the budget",
            )
        return config


def _pad_batch(batch: np.ndarray, minimum: int) -> np.ndarray:
    """``batch`` with its last image repeated up to ``minimum`` images (as it is when already that long).

    The padding follows the real images, so each real image keeps its position, and with it its noise
    index on the fused path; the caller drops the padding's outputs.
    """
    short = minimum - len(batch)
    if short <= 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], short, axis=0)])


def _runs(members: list[int], split: bool) -> list[list[int]]:
    """``members`` (ascending) as one batch, or, with ``split``, as runs of consecutive indices."""
    if not split:
        return [members]
    runs = [[members[0]]]
    for k in members[1:]:
        if k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _default_tile(side: int, overlap: int | None = None) -> TileConfig:
    """Tiles of ``side`` px with the given (else the default) overlap and the default feather, both
    shrunk as far as needed to leave a core to keep in small tiles."""
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, (side - 1) // 2)
    feather = max(0, min(DEFAULT_FEATHER, (side - 1 - 2 * overlap) // 2 * 2))
    return TileConfig(side, overlap, feather)


def load_purifier(
    source: str | os.PathLike[str],
    backend: str = "auto",
    precision: str | None = "auto",
    device: str | None = None,
    tile: int | TileConfig | None = None,
    overlap: int | None = None,
    *,
    threads: int | None = None,
    max_batch: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fused: bool | None = None,
    options: BackendOptions | Mapping[str, Any] | None = None,
    allow_failed: bool = False,
    memory_budget: int | str | None = None,
) -> Purifier:
    """A ready Purifier for ``source`` (registry name, checkpoint, .onnx with its sidecar, TensorRT engine).

    ``backend``: ``auto`` (the fastest that works here; ``purifier.backend_name`` says which,
    ``purifier.auto_choice`` why), ``tensorrt``, ``onnxruntime``, ``openvino`` or ``torch``. ``precision``:
    ``auto`` (the fastest here among the precisions whose fidelity checks pass; see ``runtime.auto``), None
    (the model's own: an artifact's, fp32 for a checkpoint) or fp32 / fp16 / int8; a checkpoint is exported
    to a cached ONNX of an asked precision on first use. An explicit backend or precision always wins; auto
    ranges over the other. ``device``: ``cpu`` / ``cuda:N`` (None: the GPU when the backend can use one). ``tile``: tile
    side in pixels (or a TileConfig); ``overlap`` its context margin (default: ``DEFAULT_OVERLAP``).
    ``threads``: intra-op threads (ONNX Runtime, torch). ``fused``: the fused GPU path for uint8 images
    (None: wherever it can run). ``options``: backend-specific options, typed (``OrtOptions(cuda_graph=True,
    fixed_shape=(1, 224, 224))``, ``TorchOptions(channels_last=True)``, ``TensorRTOptions(...)`` from
    ``nrp_deploy.runtime.backends.options``) or as a mapping of the same names
    (``{"cuda_graph": True, "fixed_shape": (1, 224, 224)}``).
    ``allow_failed``: use an artifact whose fidelity check FAILed (refused otherwise, see ``identify``).
    ``memory_budget``: without ``tile``, tile images whose estimated activations exceed it: bytes, a size
    (``"4GB"``, ``"512MiB"``), a share of the available memory (``"25%"``) or ``"off"`` (None:
    ``$NRP_MEMORY_BUDGET``, else half the memory available now; see ``runtime.memory``).
    """
    config = _tile_config(tile, overlap)
    budget = memory.resolve_budget(memory_budget)
    model = identify(source, allow_failed=allow_failed)
    if isinstance(options, BackendOptions):
        backend_options: BackendOptions | Mapping[str, Any] = options.with_threads(threads)
    else:
        backend_options = {**(options or {}), **({} if threads is None else {"threads": threads})}
    opened, choice = open_chosen(backend, model, precision, device, backend_options)
    purifier = Purifier(
        opened,
        model,
        tile=config,
        max_batch=max_batch,
        max_pixels=max_pixels,
        fused=fused,
        auto_choice=choice,
        memory_budget=budget,
    )
    log.info("purifier: %s", purifier.describe())
    return purifier


def _tile_config(tile: int | TileConfig | None, overlap: int | None) -> TileConfig | None:
    if isinstance(tile, TileConfig):
        return tile
    if tile is None:
        if overlap is not None:
            raise InputError("overlap was given without a tile size")
        return None
    if not _is_positive_int(tile):
        raise InputError(f"tile must be a positive number of pixels (or a TileConfig), got {tile!r}")
    if overlap is not None and (not _is_int(overlap) or overlap < 0):
        raise InputError(f"overlap must be a number of pixels >= 0, got {overlap!r}")
    return _default_tile(int(tile), None if overlap is None else int(overlap))


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return _is_int(value) and value >= 1
