"""``nrp purify``: files, folders or stdin through a purifier, in process or through a server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nrp_deploy.cli.common import (
    add_noise_options,
    add_runtime_options,
    dynamic_defense,
    finish_batch,
    noise_options_given,
)
from nrp_deploy.errors import NRPDeployError

if TYPE_CHECKING:
    from nrp_deploy.scale import PurifierSettings

#: ``--ray`` without an address: a local Ray, started for the job.
LOCAL_RAY = "local"


def _given(args: argparse.Namespace, name: str) -> bool:
    value = getattr(args, name)
    return value is not None and value != "auto"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "purify",
        help="purify image files or folders into PNGs",
        description="Purify images (files or folders, walked recursively) into OUT as lossless PNG, keeping "
        "the folders' layout. Bad files are reported and skipped; the exit status is 1 if any failed.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--model",
        default="default",
        help="registry name (default, NRP, NRP_resG), checkpoint, .onnx (with its .json) or TensorRT engine",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="dynamic inference: Gaussian noise, kept within a radius of the input, before purifying "
        "(published: sigma 0.05 within 16/255; see --noise-sigma, --noise-eps)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the --dynamic noise (replays a run exactly); default: a fresh seed from the OS per batch",
    )
    add_noise_options(
        p, note="with --dynamic; a server (--server) has its own, set when it is served or exported"
    )
    add_runtime_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the GPU when the backend can)")
    p.add_argument("--tile", type=int, default=None, help="tile images larger than N px (bounds memory)")
    p.add_argument("--overlap", type=int, default=None, help="context px around each tile (with --tile)")
    p.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help="without --tile, tile images whose estimated activations exceed SIZE (4GB, 512MiB, a share of "
        "the available memory such as 25%%, or off); default: $NRP_MEMORY_BUDGET, else 50%% of the memory "
        "available (MemAvailable and cgroup limits); each tiled image is reported on stderr",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op CPU threads (onnxruntime, openvino, torch); with --ray also the CPUs each actor reserves",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="images of equal size per batch; with --ray, files per Ray batch (default: 4)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument(
        "--allow-failed",
        action="store_true",
        help="use an ONNX artifact or TensorRT engine even though its fidelity check FAILed (refused otherwise)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--server",
        metavar="URL",
        help="purify through a running `nrp serve` (http://HOST:PORT or grpc://HOST:PORT) instead of in "
        "process; the server's model is used, the output is the same",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        metavar="ADDRESS",
        help="purify on the actors of a Ray cluster (auto, HOST:PORT or ray://HOST:PORT; without ADDRESS a "
        "local Ray on this machine's CPUs); the same outputs and report. Put it after the inputs or write "
        "--ray=ADDRESS. Needs pip install 'nrp-deploy[ray]'",
    )
    p.add_argument("--actors", type=int, default=None, help="with --ray: purifier actors (default: 2)")
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="with --ray: GPUs each actor reserves, fractions share one (default: 0)",
    )
    p.set_defaults(handler=_run_purify)


def _run_purify(args: argparse.Namespace) -> int:
    from nrp_deploy.batch import purify_files
    from nrp_deploy.runtime.purifier import autotile_log

    if args.seed is not None and not args.dynamic:
        raise NRPDeployError("--seed sets the --dynamic noise; add --dynamic or drop --seed")
    noise = noise_options_given(args)
    if noise and args.server:
        raise NRPDeployError(
            f"{', '.join(noise)}: a server's noise level is set when it is served (nrp serve) or exported "
            "(nrp export triton), and requests cannot change it; drop them with --server"
        )
    if noise and not args.dynamic:
        raise NRPDeployError(f"{', '.join(noise)} set the --dynamic noise; add --dynamic or drop them")
    ray_only = [
        f"--{n.replace('_', '-')}" for n in ("actors", "gpus_per_actor") if getattr(args, n) is not None
    ]
    if ray_only and args.ray is None:
        raise NRPDeployError(f"{', '.join(ray_only)} configure the --ray actors; add --ray or drop them")
    if args.server and args.ray is not None:
        raise NRPDeployError("--server and --ray are two ways to run the job; choose one")
    if args.server:
        return _run_purify_remote(args)
    if args.ray is not None:
        return _run_purify_on_ray(args)
    settings = _purifier_settings(args)
    purifier = settings.load()
    print(f"purifier: {purifier.describe()}", file=sys.stderr)
    if purifier.auto_choice is not None:
        print(purifier.auto_choice.summary(), file=sys.stderr)
    _report_tiling(autotile_log)
    report = purify_files(
        args.inputs,
        args.output,
        purifier.as_batch_fn(settings.dynamic),
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        max_pixels=purifier.max_pixels,
    )
    return finish_batch(report)


class _AboveProgressBar(logging.Handler):
    """Log records as ``nrp purify: ...`` lines on stderr, above the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(f"nrp purify: {record.getMessage()}", file=sys.stderr)


def _report_tiling(logger: logging.Logger) -> None:
    """Show the Purifier's automatic-tiling decisions (once per process, however often this runs)."""
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _AboveProgressBar) for h in logger.handlers):
        logger.addHandler(_AboveProgressBar())
    logger.propagate = False


def _run_purify_remote(args: argparse.Namespace) -> int:
    from nrp_deploy.batch import purify_files
    from nrp_deploy.serving import PurifierClient

    local = [
        f"--{n.replace('_', '-')}"
        for n in ("backend", "precision", "device", "tile", "overlap", "threads", "memory_budget")
        if _given(args, n)
    ]
    if local:
        raise NRPDeployError(f"{', '.join(local)} configure an in-process purifier; the server has its own")
    client = PurifierClient(args.server)
    client.wait_ready(timeout_s=10)
    print(f"purifier: the {client.model} model at {args.server}", file=sys.stderr)
    report = purify_files(
        args.inputs,
        args.output,
        client.as_batch_fn(dynamic=True if args.dynamic else None, seed=args.seed),
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return finish_batch(report)


def _purifier_settings(args: argparse.Namespace) -> PurifierSettings:
    """The purifier the job runs, in process or on each Ray actor: ``load_purifier``'s arguments."""
    from nrp_deploy.scale import PurifierSettings

    return PurifierSettings(
        source=str(args.model),
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        threads=args.threads,
        allow_failed=args.allow_failed,
        memory_budget=args.memory_budget,
        dynamic=dynamic_defense(args, seed=args.seed) if args.dynamic else None,
    )


def _run_purify_on_ray(args: argparse.Namespace) -> int:
    from nrp_deploy.scale import purify_files_on_ray
    from nrp_deploy.scale.job import import_ray

    address = args.ray
    if address != LOCAL_RAY and address != "auto" and ":" not in address:
        raise NRPDeployError(
            f"--ray {address!r}: not a Ray address (auto, HOST:PORT or ray://HOST:PORT); if it is an input, "
            "write the inputs before --ray, or write --ray=ADDRESS"
        )
    settings = _purifier_settings(args)
    where = "a local Ray" if address == LOCAL_RAY else f"the Ray cluster at {address}"
    actors = 2 if args.actors is None else args.actors
    print(f"purifier: {args.model} on {actors} actors of {where}", file=sys.stderr)
    if address == LOCAL_RAY and "auto" in (args.backend, args.precision):
        # time and record auto's choice once here, so the local actors open the recorded winner rather than
        # each timing the candidates on cores the others are timing on too
        with settings.load() as chosen:
            if chosen.auto_choice is not None:
                print(chosen.auto_choice.summary(), file=sys.stderr)
    import_ray()  # Ray Data configures its logger on import; the job's own bar and summary say enough
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    report = purify_files_on_ray(
        args.inputs,
        args.output,
        settings,
        address=None if address == LOCAL_RAY else address,
        actors=actors,
        gpus_per_actor=args.gpus_per_actor or 0.0,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return finish_batch(report)
