"""``nrp demo``: the package's main job in one command, on a fresh install, with no network.

It takes the example photos, attacks them with SSP (a short run, so it ends in about a minute on two CPU
cores), purifies clean and attacked images with the shipped default purifier through the fastest backend
the runtime finds here, prints the evaluation table (agreement with the clean prediction without defence,
with the purifier and with the dynamic defence; PSNR / SSIM) and writes the report and the picture grids.
Everything is the evaluation's own code path (``nrp eval``) with demo-sized settings, so the demo shows
exactly what the evaluation measures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from nrp_deploy.assets import examples_dir
from nrp_deploy.errors import InputError

EXAMPLES_DIR = examples_dir()
DEMO_ATTACKS = ("none", "ssp")
DEMO_ITERATIONS = 10
DEFAULT_OUT = Path("demo_out")


def _say(message: str) -> None:
    print(f"nrp demo: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _runtime_log_shown() -> Iterator[None]:
    """Show the runtime's and the artifacts' INFO lines (which backend it chose, any ONNX export, a cached
    artifact used) while the demo runs."""
    loggers = [logging.getLogger(name) for name in ("nrp_deploy.runtime", "nrp_deploy.artifacts")]
    previous = [logger.level for logger in loggers]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("nrp demo:   %(message)s"))
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def run_demo(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    model: str | os.PathLike[str] = "default",
    images: str | os.PathLike[str] = EXAMPLES_DIR,
    attacks: Sequence[str] = DEMO_ATTACKS,
    iterations: int = DEMO_ITERATIONS,
    backend: str = "auto",
    seed: int = 0,
    progress: bool = True,
):  # -> EvalReport; torch-heavy imports stay inside
    """Attack ``images``, purify them with ``model`` and report; returns the evaluation report.

    Prints what it does as it goes (the first use of a checkpoint with no shipped or cached ONNX exports it)
    and writes ``report.json``, ``report.md`` and ``grid_<attack>.png`` into ``out_dir``.
    """
    images = Path(images)
    if not images.is_dir() or not any(images.iterdir()):
        raise InputError(f"{images}: not a folder with images in it")
    started = time.perf_counter()
    _say("loading the attacks, the classifier and torch ...")
    from nrp_deploy.evaluation.options import EvalOptions
    from nrp_deploy.evaluation.report import format_predictions, format_table, write_report
    from nrp_deploy.evaluation.robustness import evaluate

    _say(
        f"purifier {os.fspath(model)!r} through backend {backend} "
        "(a checkpoint with no shipped or cached ONNX is exported once)"
    )
    _say(f"attacks on {images}: {', '.join(attacks)} ({iterations} iterations) ...")
    with _runtime_log_shown():
        options = EvalOptions(
            model=model, attacks=tuple(attacks), backend=backend, iterations=iterations, seed=seed
        )
        report = evaluate([images], options, progress=progress)
    written = write_report(report, out_dir)
    print(format_table(report))
    print()
    print(format_predictions(report))
    _say(f"wrote {', '.join(str(p) for p in written)}")
    _say(f"done in {time.perf_counter() - started:.1f} s")
    return report
