"""Purify many image files: group by size, run in batches, keep going past bad files, report them.

Torch-free: the purification itself is a callable taking a uint8 NHWC batch and returning one of the same
shape, so the eager baseline and every runtime backend share this one file-handling path.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nrp_deploy.errors import NRPDeployError
from nrp_deploy.images import ImageTask, collect_images, read_image, write_png

BatchFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = f"{len(self.written)} written, {len(self.skipped)} skipped (exist), {len(self.failed)} failed"
        lines = [text] + [f"  FAILED {path}: {msg}" for path, msg in self.failed]
        return "\n".join(lines)


def purify_files(
    inputs: Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    purify: BatchFn,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Purify every image under ``inputs`` into ``output_dir`` as PNG, mirroring directory layout.

    Existing outputs are skipped unless ``overwrite``; each output is written atomically, so an interrupted
    run leaves only complete files. Images of equal size are batched together (up to ``batch_size``).
    """
    if batch_size < 1:
        raise NRPDeployError(f"--batch-size must be >= 1, got {batch_size}")
    out_root = Path(output_dir)
    report = BatchReport()
    pending: list[ImageTask] = []
    for task in collect_images(inputs):
        target = task.output_path(out_root)
        if target.exists() and not overwrite:
            report.skipped.append(target)
        elif task.source.resolve() == target.resolve():
            report.failed.append((task.source, "output would overwrite the input file"))
        else:
            pending.append(task)

    max_buffered = 4 * batch_size
    buckets: OrderedDict[tuple[int, ...], list[tuple[ImageTask, np.ndarray]]] = OrderedDict()
    bar = tqdm(total=len(pending), unit="img", disable=not progress, file=sys.stderr)

    def flush(shape: tuple[int, ...]) -> None:
        items = buckets.pop(shape)
        batch = np.stack([image for _, image in items])
        try:
            result = purify(batch)
        except NRPDeployError as exc:
            report.failed.extend((task.source, str(exc)) for task, _ in items)
        else:
            for (task, _), image in zip(items, result, strict=True):
                target = task.output_path(out_root)
                try:
                    write_png(target, image)
                except OSError as exc:
                    report.failed.append((task.source, f"cannot write {target}: {exc}"))
                else:
                    report.written.append(target)
        bar.update(len(items))

    for task in pending:
        try:
            image = read_image(task.source)
        except NRPDeployError as exc:
            report.failed.append((task.source, str(exc)))
            bar.update(1)
            continue
        buckets.setdefault(image.shape, []).append((task, image))
        if len(buckets[image.shape]) >= batch_size:
            flush(image.shape)
        elif sum(len(items) for items in buckets.values()) > max_buffered:
            flush(next(iter(buckets)))  # many distinct sizes: bound memory by flushing the oldest group
    for shape in list(buckets):
        flush(shape)
    bar.close()
    return report
