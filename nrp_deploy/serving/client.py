"""Client helpers: purify images through a running server over Triton's HTTP or gRPC protocol.

``PurifierClient("http://127.0.0.1:8000")`` or ``PurifierClient("grpc://127.0.0.1:8001")`` (``host:port``
alone means HTTP). One instance may be used from many threads: each thread gets its own tritonclient
connection, since one gevent-based HTTP client shared across threads can hang.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from nrp_deploy.batch import BatchFn, by_index_runs
from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.serving import protocol
from nrp_deploy.serving.triton_server import ServerError


def _tritonclient(protocol_name: str) -> Any:
    try:
        if protocol_name == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {protocol_name} client needs tritonclient: pip install 'tritonclient[http,grpc]' ({exc})"
        ) from exc
    return module


class PurifierClient:
    """Purify uint8 images through the ``nrp_purifier`` model of a Triton server."""

    def __init__(self, url: str, model: str = protocol.MODEL_NAME, timeout_s: float = 120.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "grpc") or not parts.hostname or not parts.port:
            raise InputError(f"server URL {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
        self.url = url
        self.protocol = parts.scheme
        self.address = f"{parts.hostname}:{parts.port}"
        self.model = model
        self.timeout_s = timeout_s
        self._module = _tritonclient(self.protocol)
        self._local = threading.local()
        self._opened: list[Any] = []  # every thread's connection, so close() can end them all
        self._opened_lock = threading.Lock()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.address)
            else:
                client = self._module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._opened_lock:
                self._opened.append(client)
        return client

    def is_ready(self) -> bool:
        """True when the server answers and the purifier model is ready."""
        try:
            return bool(self._client().is_model_ready(self.model))
        except Exception:
            return False

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise ServerError(f"no ready '{self.model}' model at {self.url} after {timeout_s:.0f} s")
            time.sleep(0.2)

    def purify(
        self, images: np.ndarray, dynamic: bool | None = None, seed: int | None = None, start_index: int = 0
    ) -> np.ndarray:
        """Purify a uint8 ``[N, H, W, 3]`` batch (or one ``[H, W, 3]`` image); same shape out.

        ``dynamic``: the dynamic defence on or off (None: the server's default); ``seed`` and
        ``start_index`` key its noise exactly as ``Purifier(images, DynamicDefense(seed=seed), start_index)``.
        """
        images = np.asarray(images)
        single = images.ndim == 3
        batch = np.ascontiguousarray(images[None] if single else images)
        protocol.check_images(batch)
        parameters = protocol.encode_parameters(dynamic, seed, start_index)
        m = self._module
        tensor = m.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
        output = m.InferRequestedOutput(protocol.OUTPUT)
        kwargs: dict[str, Any] = {"outputs": [output], "parameters": parameters or None}
        if self.protocol == "http":
            tensor.set_data_from_numpy(batch, binary_data=True)
            kwargs["outputs"] = [m.InferRequestedOutput(protocol.OUTPUT, binary_data=True)]
        else:
            tensor.set_data_from_numpy(batch)
            kwargs["client_timeout"] = self.timeout_s
        try:
            result = self._client().infer(self.model, [tensor], **kwargs)
        except Exception as exc:  # tritonclient raises InferenceServerException and transport errors
            raise ServerError(f"{self.url}: {_message(exc)}") from exc
        out = result.as_numpy(protocol.OUTPUT)
        if out is None or out.shape != batch.shape or out.dtype != np.uint8:
            raise ServerError(f"{self.url}: malformed answer for '{protocol.OUTPUT}'")
        return out[0] if single else out

    def as_batch_fn(self, dynamic: bool | None = None, seed: int | None = None) -> BatchFn:
        """The batch callable of ``nrp_deploy.batch.purify_files``: every image is sent with its job index
        (``batch.by_index_runs``; the server's default may turn noise on), so a seeded job through the
        server replays ``Purifier.as_batch_fn`` byte for byte."""
        return by_index_runs(
            lambda batch, start: self.purify(batch, dynamic=dynamic, seed=seed, start_index=start)
        )

    def close(self) -> None:
        """Close every thread's connection (an idle HTTP keep-alive connection holds a server's shutdown
        until its exit timeout)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for client in opened:
            client.close()
        self._local = threading.local()

    def __enter__(self) -> PurifierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return text or type(exc).__name__
