"""Purify many image files: group by size, run in batches, keep going past bad files, report them.

Torch-free: the purification itself is a callable taking a uint8 NHWC batch and the images' job indices and
returning a batch of the same shape, so the eager baseline, every runtime backend, a server and a Ray
cluster (``nrp_deploy.scale``) share this one file-handling path: ``plan_job`` decides what to do with each
file, ``purify_batch`` runs one batch, ``write_output`` moves one result into place.

An image's job index is its place among all the files the job found, in scan order (``scan_images``): the
dynamic defence keys its noise by it, so a seeded job gives the same bytes whatever the batch size, however
many workers share the job, and when a rerun resumes it (files already written keep their indices).

No output is ever lost or replaced by accident: inputs whose outputs would share a name (``a.jpg`` and
``a.png``, or names differing only in case, which collide on case-insensitive file systems) are refused
together before anything runs, and without ``overwrite`` an output is moved into place only if its name is
still free at that moment (a file that appeared while the job ran is kept and the output counted as
skipped). Temporary files that an earlier, killed run left in the output folders are removed.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nrp_deploy.errors import NRPDeployError
from nrp_deploy.fileutil import atomic_output, remove_stale_temporaries
from nrp_deploy.images import ImageTask, encode_png, read_image, scan_images

#: ``purify(batch, indices)``: a uint8 NHWC batch and each image's job index in, a uint8 batch of the same
#: shape out; a purifier without the dynamic defence ignores the indices.
BatchFn = Callable[[np.ndarray, Sequence[int]], np.ndarray]
#: Pixels buffered per batch before it runs anyway: large images run alone, so memory stays bounded.
BATCH_PIXELS = 1 << 24


@dataclass
class BatchReport:
    """What a batch job did with each file; ``failed`` pairs a path with the reason, which does not repeat it."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def fail(self, path: Path, reason: str) -> None:
        """Record that ``path`` failed. Errors that name their file (as image reading's do) begin with the path;
        that prefix is dropped so the path is given once, in the pair, and the summary names it once."""
        self.failed.append((path, reason.removeprefix(f"{path}: ")))

    def summary(self) -> str:
        text = f"{len(self.written)} written, {len(self.skipped)} skipped (exist), {len(self.failed)} failed"
        lines = [text] + [f"  SKIPPED {path}: exists" for path in self.skipped]
        lines += [f"  FAILED {path}: {msg}" for path, msg in self.failed]
        return "\n".join(lines)


@dataclass(frozen=True)
class PlannedImage:
    """One file a job will purify: its task and its job index (the dynamic defence's noise index)."""

    index: int
    task: ImageTask


def plan_job(
    inputs: Iterable[str | os.PathLike[str]], out_root: Path, overwrite: bool, report: BatchReport
) -> list[PlannedImage]:
    """The files to purify under ``inputs``, in scan order, each with its job index; the paths passed over,
    the collisions and the existing outputs go into ``report`` instead. Temporary files a killed run left in
    the output folders are removed."""
    found = scan_images(inputs)
    for path, reason in found.passed_over:
        report.fail(path, reason)
    pending = _plan(found.tasks, out_root, overwrite, report)
    for directory in sorted({task.output_path(out_root).parent for task in pending}):
        remove_stale_temporaries(directory)
    index = {id(task): k for k, task in enumerate(found.tasks)}
    return [PlannedImage(index[id(task)], task) for task in pending]


def purify_files(
    inputs: Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    purify: BatchFn,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int | None = None,
) -> BatchReport:
    """Purify every image under ``inputs`` into ``output_dir`` as PNG, mirroring directory layout.

    Existing outputs are skipped unless ``overwrite``; each output is written atomically, so an interrupted
    run leaves only complete files. Images of equal size are batched together (up to ``batch_size``).
    ``max_pixels`` refuses larger images from their declared size, before decoding them.
    """
    if batch_size < 1:
        raise NRPDeployError(f"--batch-size must be >= 1, got {batch_size}")
    out_root = Path(output_dir)
    report = BatchReport()
    pending = plan_job(inputs, out_root, overwrite, report)

    max_buffered = 4 * batch_size
    buckets: OrderedDict[tuple[int, ...], list[tuple[PlannedImage, np.ndarray]]] = OrderedDict()
    bar = tqdm(total=len(pending), unit="img", disable=not progress, file=sys.stderr)

    def flush(shape: tuple[int, ...]) -> None:
        items = buckets.pop(shape)
        batch = np.stack([image for _, image in items])
        planned = [item for item, _ in items]
        del items  # the stacked copy is all that is needed now
        try:
            result = purify_batch(purify, batch, [item.index for item in planned])
        except NRPDeployError as exc:
            for item in planned:
                report.fail(item.task.source, str(exc))
        else:
            for item, image in zip(planned, result, strict=True):
                write_output(item.task, encode_png(image), out_root, overwrite, report)
        bar.update(len(planned))

    def buffered_pixels() -> int:
        return sum(len(items) * shape[0] * shape[1] for shape, items in buckets.items())

    for item in pending:
        try:
            image = read_image(item.task.source, max_pixels=max_pixels)
        except NRPDeployError as exc:
            report.fail(item.task.source, str(exc))
            bar.update(1)
            continue
        bucket = buckets.setdefault(image.shape, [])
        bucket.append((item, image))
        if len(bucket) >= batch_size or len(bucket) * image.shape[0] * image.shape[1] >= BATCH_PIXELS:
            flush(image.shape)
        while buckets and (
            sum(len(items) for items in buckets.values()) > max_buffered
            or buffered_pixels() > 2 * BATCH_PIXELS
        ):
            flush(next(iter(buckets)))  # many distinct sizes: bound memory by flushing the oldest group
    for shape in list(buckets):
        flush(shape)
    bar.close()
    return report


def _plan(tasks: list[ImageTask], out_root: Path, overwrite: bool, report: BatchReport) -> list[ImageTask]:
    """The tasks to run; collisions, outputs that would replace an input or cannot be written where an
    existing file or folder stands, and existing outputs are sorted out into ``report`` first, so nothing
    is decoded for them.

    Two outputs collide when they would share a name (compared without case) or when one output's name
    would also be a folder holding others (``x.jpg`` and ``x.png/inner.png`` both want ``x.png``); every
    task in a collision is refused, by name, since whichever ran first would lose the other's output."""
    by_name: dict[str, list[ImageTask]] = {}
    inside: dict[str, list[ImageTask]] = {}  # output folder -> the tasks writing below it
    for task in tasks:
        by_name.setdefault(_key(task.output_path(out_root)), []).append(task)
        for folder in _folders_below_root(task, out_root):
            inside.setdefault(_key(folder), []).append(task)
    sources = {_resolved(task.source) for task in tasks}
    pending = []
    for task in tasks:
        target = task.output_path(out_root)
        sharing = by_name[_key(target)]
        holder = next((f for f in _folders_below_root(task, out_root) if _key(f) in by_name), None)
        if len(sharing) > 1:
            others = _sources(t for t in sharing if t is not task)
            report.fail(
                task.source, f"its output {target} would also be written from {others}; rename one of them"
            )
        elif _key(target) in inside:
            others = _sources(inside[_key(target)])
            report.fail(
                task.source,
                f"its output {target} would also be a folder holding the outputs of {others}; rename one of them",
            )
        elif holder is not None:
            others = _sources(by_name[_key(holder)])
            report.fail(
                task.source,
                f"its output {target} would be inside {holder}, which would also be written as a file from "
                f"{others}; rename one of them",
            )
        elif _resolved(target) in sources:
            report.fail(task.source, f"its output {target} would replace an input file")
        elif (blocker := _existing_non_folder_above(target, out_root)) is not None:
            report.fail(task.source, f"cannot write {target}: {blocker} exists and is not a folder")
        elif target.is_dir():
            report.fail(task.source, f"cannot write {target}: a folder of that name exists")
        elif target.exists() and not overwrite:
            report.skipped.append(target)
        else:
            pending.append(task)
    return pending


def _key(path: Path) -> str:
    """Output names are compared without case: they collide on case-insensitive file systems."""
    return str(path).casefold()


def _folders_below_root(task: ImageTask, out_root: Path) -> list[Path]:
    """The folders an output is written into, from its own folder up to, not including, ``out_root``."""
    return [out_root / folder for folder in task.relative.parents[:-1]]


def _sources(tasks: Iterable[ImageTask]) -> str:
    return ", ".join(str(task.source) for task in tasks)


def _existing_non_folder_above(target: Path, out_root: Path) -> Path | None:
    """The first path above ``target`` (up to ``out_root`` included) that exists and is not a folder, which
    would make writing ``target`` fail; None if there is none."""
    for folder in target.parents:
        if folder.exists() and not folder.is_dir():
            return folder
        if folder == out_root:
            break
    return None


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: it cannot be an output's real location
        return path.absolute()


def purify_batch(purify: BatchFn, batch: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """``purify`` run on one uint8 NHWC batch, its result checked: an NRPDeployError says what went wrong,
    for the whole batch."""
    result = purify(batch, indices)
    if not isinstance(result, np.ndarray) or result.dtype != np.uint8 or result.shape != batch.shape:
        got = f"{result.dtype} {result.shape}" if isinstance(result, np.ndarray) else type(result).__name__
        raise NRPDeployError(f"the purifier returned {got} for a uint8 batch of shape {batch.shape}")
    return result


def write_output(task: ImageTask, png: bytes, out_root: Path, overwrite: bool, report: BatchReport) -> None:
    """Move one encoded output into place atomically (without ``overwrite``, only if its name is still
    free) and record in ``report`` what happened."""
    target = task.output_path(out_root)
    try:
        with atomic_output(target, overwrite=overwrite) as fh:
            fh.write(png)
    except FileExistsError as exc:
        if target.parent.is_dir():
            report.skipped.append(target)  # it appeared while the job ran: kept, as any existing output
        else:  # a file took the name of the output's folder while the job ran
            report.fail(task.source, f"cannot write {target}: {exc}")
    except (OSError, NRPDeployError) as exc:
        report.fail(task.source, f"cannot write {target}: {exc}")
    else:
        report.written.append(target)


def by_index_runs(purify: Callable[[np.ndarray, int], np.ndarray]) -> BatchFn:
    """Turn ``purify(batch, start_index)``, whose image ``n`` gets noise index ``start_index + n``, into a
    ``BatchFn``: each run of consecutive job indices in a batch is one call, so every image gets the noise
    of its own index (a bad file or an image of another size between two images splits a run)."""

    def call(batch: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        starts = [k for k in range(len(indices)) if k == 0 or indices[k] != indices[k - 1] + 1]
        ends = [*starts[1:], len(indices)]
        parts = [purify(batch[a:b], int(indices[a])) for a, b in zip(starts, ends, strict=True)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return call
