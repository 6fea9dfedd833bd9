"""``nrp purify --ray``: the ``nrp purify`` job with its purification spread over the actors of a Ray cluster.

Only the execution moves: the driver plans the job exactly as ``purify_files`` does (``batch.plan_job``: the
same layout, collisions and existing outputs sorted out first, the same job indices), Ray Data streams the
planned files through ``BatchPurifier`` actors (each decodes, purifies and PNG-encodes its batch), and the
driver writes each returned PNG with ``batch.write_output`` (atomic, no clobbering), so the outputs are
byte for byte those of ``nrp purify`` and the report is the same.

The driver writes, not the actors: Ray retries the batch of an actor that died, and only the driver sees
each result exactly once, so every output is written once and counted once even then (an actor that had
written part of its batch before dying would find its own files on the retry and report them as existing).
The cost is that the encoded PNGs travel to the driver through the object store; see README ("Scaling out").

An actor that dies (killed, out of memory) is restarted and its batch retried, as Ray Data does by default
(without limit: Ray 2.60 deprecates setting an actor pool's ``max_restarts``). Should Ray stop the job
anyway (an actor that cannot be constructed, a lost node), every file without a result is reported failed.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from tqdm import tqdm

from nrp_deploy.batch import BatchReport, PlannedImage, plan_job, write_output
from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.scale.actor import ERROR, INDEX, PATH, PNG, BatchPurifier, PurifierSettings

if TYPE_CHECKING:
    from ray.data import Dataset

INSTALL_HINT = "pip install 'nrp-deploy[ray]'"
#: At most this many Ray blocks: each holds a slice of the file list (a few dozen bytes a file), so a
#: million files make 4096 tasks, not a million.
MAX_BLOCKS = 4096


def import_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or an error that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BackendUnavailableError(f"Ray Data is not installed ({exc}); {INSTALL_HINT}") from exc
    return ray


def purify_files_on_ray(
    inputs: Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    settings: PurifierSettings,
    *,
    address: str | None = None,
    actors: int = 2,
    gpus_per_actor: float = 0.0,
    batch_size: int = 4,
    overwrite: bool = False,
    progress: bool = True,
    actor_class: type[BatchPurifier] = BatchPurifier,
) -> BatchReport:
    """Purify every image under ``inputs`` into ``output_dir`` as ``purify_files`` does, on Ray actors.

    ``address``: the cluster to join (``auto``, ``ray://host:port``, ``host:port``); None starts a local Ray
    with this machine's CPUs (and shuts it down at the end) unless this process is already connected to one,
    which is then used. ``actors``: the actor pool's size (a fixed ``ActorPoolStrategy``); each actor reserves
    ``gpus_per_actor`` GPUs (``num_gpus``; fractions share one) and ``settings.threads`` CPUs (1 if unset).
    ``batch_size``: files per Ray batch (``map_batches``' ``batch_size``). ``actor_class``: BatchPurifier or a
    subclass of it (tests inject faults this way).
    """
    for name, value in (("--actors", actors), ("--batch-size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if not (
        isinstance(gpus_per_actor, int | float) and math.isfinite(gpus_per_actor) and gpus_per_actor >= 0
    ):
        raise InputError(f"--gpus-per-actor must be a number >= 0, got {gpus_per_actor!r}")
    ray = import_ray()
    out_root = Path(output_dir)
    report = BatchReport()
    planned = plan_job(inputs, out_root, overwrite, report)
    if not planned:
        return report
    started = _connect(ray, address)
    context = ray.data.DataContext.get_current()
    ray_bars, context.enable_progress_bars = context.enable_progress_bars, False  # the job's bar counts files
    try:
        results = _results(ray, planned, settings, actors, gpus_per_actor, batch_size, actor_class)
        _collect(ray, results, planned, out_root, overwrite, report, progress)
    finally:
        context.enable_progress_bars = ray_bars
        if started:
            ray.shutdown()
    return report


def _connect(ray: ModuleType, address: str | None) -> bool:
    """Join ``address`` or start a local Ray on loopback (unless already connected); whether this call
    connected."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


def _results(
    ray: ModuleType,
    planned: list[PlannedImage],
    settings: PurifierSettings,
    actors: int,
    gpus_per_actor: float,
    batch_size: int,
    actor_class: type[BatchPurifier],
) -> Dataset:
    """The lazy Ray dataset of results: one row per planned file (``index``, ``path``, ``png``, ``error``)."""
    rows = [{INDEX: item.index, PATH: str(item.task.source)} for item in planned]
    blocks = min(MAX_BLOCKS, math.ceil(len(rows) / batch_size))
    files = ray.data.from_items(rows, override_num_blocks=blocks)
    return files.map_batches(
        actor_class,
        fn_constructor_args=(settings,),
        fn_constructor_kwargs={"encode": True},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(actors, blocks)),  # an actor per block at most
        num_cpus=settings.threads or 1,
        num_gpus=gpus_per_actor,
    )


def _collect(
    ray: ModuleType,
    results: Dataset,
    planned: list[PlannedImage],
    out_root: Path,
    overwrite: bool,
    report: BatchReport,
    progress: bool,
) -> None:
    """Write each result as it streams in; when Ray gives up on the job, fail the files still without one."""
    waiting = {item.index: item for item in planned}
    bar = tqdm(total=len(planned), unit="img", disable=not progress, file=sys.stderr)
    try:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for index, png, error in zip(batch[INDEX], batch[PNG], batch[ERROR], strict=True):
                item = waiting.pop(int(index), None)
                if item is None:  # a result Ray delivered twice: its file is written already
                    continue
                if error:
                    report.fail(item.task.source, str(error))
                else:
                    write_output(item.task, bytes(png), out_root, overwrite, report)
                bar.update(1)
    except ray.exceptions.RayError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for item in waiting.values():
            report.fail(item.task.source, f"not purified: the Ray job stopped ({reason})")
    finally:
        bar.close()
