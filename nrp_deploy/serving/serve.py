"""``nrp serve``: a Purifier of any backend behind the bundled Triton Inference Server.

The server gets a one-model repository (written to a temporary folder): a Python-backend model that loads
the Purifier with the given settings and answers each request on its own (``triton_models/purifier_model``),
with Triton's dynamic batcher in front and ``instances`` copies of the model. We launch the ``tritonserver``
binary directly rather than through PyTriton's proxy, because the proxy fails every request of a dynamic
batch when one of them is bad and cannot answer per request.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType

from nrp_deploy.artifacts.sources import identify
from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA
from nrp_deploy.runtime.backends import backend_module
from nrp_deploy.runtime.dynamic import check_noise_level
from nrp_deploy.runtime.on_demand import onnx_for
from nrp_deploy.runtime.purifier import DEFAULT_MAX_PIXELS, load_purifier
from nrp_deploy.serving import protocol
from nrp_deploy.serving.model_config import Batching, TensorSpec, model_config
from nrp_deploy.serving.triton_server import Endpoints, ServerError, TritonServer

log = logging.getLogger(__name__)

MODEL_SOURCE = Path(__file__).parent / "triton_models" / "purifier_model.py"
WARMUP_SIDE = 64


@dataclass(frozen=True)
class ServeSettings:
    """What the served Purifier is (the arguments of ``load_purifier``), the dynamic-defence default and
    its noise level (``noise_sigma``, ``noise_eps``: the server's own, which requests cannot change)."""

    model: str = "default"
    backend: str = "auto"
    precision: str | None = "auto"
    device: str | None = None
    threads: int | None = None
    dynamic: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    sys_path: list[str] = field(default_factory=lambda: [p for p in sys.path if p])
    noise_sigma: float = PUBLISHED_SIGMA
    noise_eps: float = PUBLISHED_EPS

    def __post_init__(self) -> None:
        for name in ("noise_sigma", "noise_eps"):  # refused here, not by every request inside the server
            check_noise_level(name, getattr(self, name))


def _absolute_model(model: str) -> str:
    """A model path as an absolute path (the server's processes have their own working directory)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def write_serve_repository(
    root: Path, settings: ServeSettings, batching: Batching | None = None, instances: int = 1
) -> Path:
    """``root/nrp_purifier/{config.pbtxt, 1/model.py}``: the Purifier as a Triton Python-backend model."""
    batching = batching or Batching()
    if instances < 1:
        raise InputError(f"--instances must be >= 1, got {instances}")
    if batching.max_batch_size < 1:
        raise InputError(f"--max-batch must be >= 1, got {batching.max_batch_size}")
    if batching.delay_us is not None and batching.delay_us < 0:
        raise InputError(f"--max-queue-delay-us must be >= 0, got {batching.delay_us}")
    settings_json = json.dumps(asdict(settings) | {"model": _absolute_model(settings.model)})
    image = TensorSpec(protocol.INPUT, "uint8", (-1, -1, 3))
    text = model_config(
        protocol.MODEL_NAME,
        backend="python",
        inputs=[image],
        outputs=[TensorSpec(protocol.OUTPUT, "uint8", (-1, -1, 3))],
        batching=batching,
        instances=instances,
        gpu=bool(settings.device and settings.device.startswith("cuda")),
        parameters={"nrp_settings": settings_json},
        warmup=[("zeros", TensorSpec(protocol.INPUT, "uint8", (WARMUP_SIDE, WARMUP_SIDE, 3)))],
    )
    model_dir = Path(root) / protocol.MODEL_NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    (model_dir / "1" / "model.py").write_text(MODEL_SOURCE.read_text(encoding="utf-8"), encoding="utf-8")
    return Path(root)


def _prepared(settings: ServeSettings) -> ServeSettings:
    """Refuse a missing or unreadable model before a server starts, and do here, once, what would otherwise
    happen in every model instance (this also says what to install where torch is missing, as in the
    serving environment): export an FP32 checkpoint to ONNX, or, for an ``auto`` choice, load the purifier
    once, so that the choice is timed and recorded (``runtime.auto``) before the instances start and each
    of them opens the recorded winner rather than timing on cores the others are timing on too. A named
    backend this environment cannot run (OpenVINO not installed, say) is refused here with what to install,
    rather than by every model instance inside a server that then fails to start."""
    source = identify(settings.model)
    if settings.backend != "auto":
        reason = backend_module(settings.backend).unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {settings.backend} is unavailable in this environment ({sys.executable}): {reason}"
            )
    if settings.backend == "auto" or settings.precision == "auto":
        load_purifier(
            settings.model, settings.backend, settings.precision, settings.device, threads=settings.threads
        ).close()
        return settings
    if source.kind != "checkpoint" or settings.backend == "torch" or settings.precision not in (None, "fp32"):
        return settings
    return replace(settings, model=str(onnx_for(source, "fp32")))


def only_here(handler: Callable[[int, FrameType | None], None]) -> Callable[[int, FrameType | None], None]:
    """``handler`` in this process; in a process forked from it, the signal's default action.

    A library may fork this process from a thread of its own: OpenVINO's import sends a usage record from
    a ``multiprocessing`` child that it terminates (SIGTERM) when the network does not answer in 3 s, and
    ``multiprocessing`` joins that child when this process exits. A child that inherited ``shut_down``
    would outlive the SIGTERM (holding our exit) and signal a copy of our server handle."""
    owner = os.getpid()

    def handle(signum: int, frame: FrameType | None) -> None:
        if os.getpid() == owner:
            handler(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return handle


def serve(
    settings: ServeSettings,
    endpoints: Endpoints | None = None,
    batching: Batching | None = None,
    instances: int = 1,
    ready_timeout_s: float = 300.0,
    on_ready: Callable[[Endpoints], None] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly (requests in flight finish); exit status."""
    settings = _prepared(settings)
    endpoints = endpoints or Endpoints()
    with tempfile.TemporaryDirectory(prefix="nrp-serve-") as work:
        repository = write_serve_repository(Path(work) / "models", settings, batching, instances)
        server = TritonServer(repository, Path(work), endpoints)
        stopping = False

        def shut_down(signum: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            log.info("signal %d: shutting the server down", signum)
            server.terminate()

        previous = {sig: signal.signal(sig, only_here(shut_down)) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                server.start(ready_timeout_s)
            except ServerError:
                if stopping:  # asked to stop while starting
                    return 0
                raise
            if on_ready is not None:
                on_ready(endpoints)
            code = server.wait()
        finally:
            server.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if stopping:
            return 0
        raise ServerError(f"tritonserver exited on its own with status {code}")
