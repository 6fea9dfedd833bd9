"""The purifier one Ray Data actor holds: ``ds.map_batches(BatchPurifier, fn_constructor_args=(settings,))``.

Ray constructs the class once per actor, so the model is loaded (and, for a checkpoint, exported) once per
actor, not per batch; each call then purifies one Ray batch, a dict of numpy columns. Nothing here imports
Ray: the class is plain Python, and runs (and is tested) without a cluster.

A batch holds either decoded images (an ``image`` column of uint8 HWC arrays, as ``ray.data.read_images(...,
mode="RGB", include_paths=True)`` makes) or file names (a ``path`` column, decoded here, so one bad file fails
its own row and no other). Images of different sizes may share a batch: they are grouped by size and each
group is one purifier call (capped at ``batch.BATCH_PIXELS`` pixels, as ``nrp purify`` caps its batches).

The dynamic defence keys an image's noise by its ``index`` column when the batch has one (``nrp purify
--ray`` gives every file its job index, the index ``nrp purify`` uses, so the bytes match), else by a 32-bit
hash of its ``path`` (``path_index``): either way a seeded job gives the same bytes on any number of actors,
whatever the batch boundaries. Failures are not raised: the ``error`` column names what went wrong for the
row ("" when it was purified), so a job goes on past a bad file and reports it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrp_deploy.batch import BATCH_PIXELS, purify_batch
from nrp_deploy.errors import InputError, NRPDeployError
from nrp_deploy.images import encode_png, read_image
from nrp_deploy.runtime import DynamicDefense, Purifier, load_purifier

INDEX, PATH, IMAGE, PNG, ERROR = "index", "path", "image", "png", "error"
#: An image whose row failed, in the ``image`` column: empty, so it can never pass for a purified one.
NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


@dataclass(frozen=True)
class PurifierSettings:
    """What ``load_purifier`` is given on every actor, and the dynamic defence (None: off); picklable, so
    Ray ships it to the actors. See ``load_purifier`` for the meaning of each field."""

    source: str = "default"
    backend: str = "auto"
    precision: str | None = None
    device: str | None = None
    tile: int | None = None
    overlap: int | None = None
    threads: int | None = None
    allow_failed: bool = False
    memory_budget: str | None = None
    dynamic: DynamicDefense | None = None

    def load(self) -> Purifier:
        return load_purifier(
            self.source,
            backend=self.backend,
            precision=self.precision,
            device=self.device,
            tile=self.tile,
            overlap=self.overlap,
            threads=self.threads,
            allow_failed=self.allow_failed,
            memory_budget=self.memory_budget,
        )


def path_index(path: str) -> int:
    """A stable 32-bit noise index for an image known only by its path (the first 4 bytes of its BLAKE2b
    digest): the same on every actor and every run, unlike a row's position in a Ray dataset."""
    digest = hashlib.blake2b(os.fsencode(path), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class BatchPurifier:
    """The callable class for ``ray.data.Dataset.map_batches``: one Purifier per actor, one Ray batch per call.

    ``encode``: put each result in a ``png`` column as the bytes of its PNG file (what ``nrp purify --ray``
    writes, encoded on the actors) instead of an ``image`` column of uint8 HWC arrays (to feed a classifier
    in the same pipeline). Every other column of the batch is passed through.
    """

    def __init__(self, settings: PurifierSettings, encode: bool = False) -> None:
        self.settings = settings
        self.encode = encode
        self.purifier = settings.load()
        self._purify = self.purifier.as_batch_fn(settings.dynamic)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = _row_count(batch)
        errors = [""] * count
        images = self._images(batch, errors)
        indices = self._indices(batch, count)
        results: list[np.ndarray] = [NO_IMAGE] * count
        for rows in _size_groups(images, indices, errors):
            try:
                out = purify_batch(
                    self._purify, np.stack([images[k] for k in rows]), [indices[k] for k in rows]
                )
            except NRPDeployError as exc:
                for k in rows:
                    errors[k] = str(exc)
                continue
            for k, image in zip(rows, out, strict=True):
                results[k] = image
        columns = {name: column for name, column in batch.items() if name != IMAGE}
        if self.encode:
            columns[PNG] = _objects(
                [encode_png(image) if not errors[k] else b"" for k, image in enumerate(results)]
            )
        else:
            columns[IMAGE] = _image_column(results)
        columns[ERROR] = np.array(errors, dtype=object)
        return columns

    def _images(self, batch: dict[str, np.ndarray], errors: list[str]) -> list[np.ndarray]:
        """The batch's images, decoded from ``path`` when there is no ``image`` column; a row that cannot
        be read gets its error and an empty image."""
        if IMAGE in batch:
            images = list(batch[IMAGE])
            for k, image in enumerate(images):
                if not _is_rgb8(image):
                    got = (
                        f"{image.dtype} {image.shape}"
                        if isinstance(image, np.ndarray)
                        else type(image).__name__
                    )
                    errors[k] = f"expected a uint8 (H, W, 3) image (read_images(..., mode='RGB')), got {got}"
            return images
        if PATH not in batch:
            raise InputError(f"a batch needs an '{IMAGE}' or a '{PATH}' column; it has {sorted(batch)}")
        images = []
        for k, path in enumerate(batch[PATH]):
            try:
                images.append(read_image(str(path), max_pixels=self.purifier.max_pixels))
            except NRPDeployError as exc:
                errors[k] = str(exc).removeprefix(f"{path}: ")
                images.append(NO_IMAGE)
        return images

    def _indices(self, batch: dict[str, np.ndarray], count: int) -> list[int]:
        if INDEX in batch:
            return [int(k) for k in batch[INDEX]]
        if PATH in batch:
            return [path_index(str(path)) for path in batch[PATH]]
        if self.settings.dynamic is not None:
            raise InputError(
                f"the dynamic defence keys each image's noise by an '{INDEX}' or a '{PATH}' column "
                f"(read_images(..., include_paths=True)); the batch has {sorted(batch)}"
            )
        return [0] * count


def _row_count(batch: dict[str, np.ndarray]) -> int:
    lengths = {len(column) for column in batch.values()}
    if len(lengths) != 1:
        raise InputError(f"a batch's columns must have one length, got {sorted(lengths)}")
    return lengths.pop()


def _is_rgb8(image: Any) -> bool:
    return (
        isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    )


def _size_groups(
    images: Sequence[np.ndarray], indices: Sequence[int], errors: Sequence[str]
) -> list[list[int]]:
    """The rows to purify together: equal sizes, in index order, at most ``BATCH_PIXELS`` pixels a group
    (a larger image alone)."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for k in sorted(range(len(images)), key=lambda k: indices[k]):
        if not errors[k]:
            by_size.setdefault(images[k].shape, []).append(k)
    groups = []
    for shape, rows in by_size.items():
        step = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
        groups += [rows[i : i + step] for i in range(0, len(rows), step)]
    return groups


def _objects(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    for k, value in enumerate(values):  # one by one: numpy would try to broadcast equal-shaped arrays
        column[k] = value
    return column


def _image_column(images: list[np.ndarray]) -> np.ndarray:
    """One 4-D array when every image has one shape, else an object array of images (Ray's variable-shaped
    tensor column)."""
    if len({image.shape for image in images}) == 1:
        return np.stack(images)
    return _objects(images)
