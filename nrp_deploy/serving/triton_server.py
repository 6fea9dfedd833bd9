"""Run the bundled ``tritonserver`` over a model repository: start, wait until ready, stop cleanly.

The server runs in its own session (process group), so one signal reaches it and its Python-backend stubs,
and it is told to end with us (``PR_SET_PDEATHSIG``) so a killed parent leaves no orphan. Stopping sends
SIGTERM (Triton finishes the requests in flight, then exits), escalates to SIGKILL on the whole group after
the exit timeout, and removes the Python backend's ``/dev/shm`` regions, which carry a per-server prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nrp_deploy.errors import NRPDeployError
from nrp_deploy.serving.triton_binary import TritonBinary, find_triton

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ServerError(NRPDeployError):
    """The Triton server did not start, did not become ready, or failed a request."""


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens; ``host`` is loopback unless asked otherwise."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free on ``host`` right now, all different (bound together, then released): for tests and
    benchmarks that start servers side by side."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when the parent process ends."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """One ``tritonserver`` process over ``repository``; use as a context manager or start()/stop()."""

    def __init__(
        self,
        repository: Path,
        workspace: Path,
        endpoints: Endpoints | None = None,
        exit_timeout_s: int = 30,
        log_to: IO[bytes] | None = None,
        binary: TritonBinary | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.workspace = Path(workspace)
        self.endpoints = endpoints or Endpoints()
        self.exit_timeout_s = exit_timeout_s
        self.shm_prefix = f"nrp_{os.getpid()}_{secrets.token_hex(4)}_"
        self._log_to = log_to
        self._binary = binary or find_triton()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        e = self.endpoints
        backends = self._binary.make_backends(self.workspace / "backends")
        return [
            str(self._binary.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--http-address={e.host}",
            f"--http-port={e.http_port}",
            f"--grpc-address={e.host}",
            f"--grpc-port={e.grpc_port}",
            f"--metrics-address={e.host}",
            f"--metrics-port={e.metrics_port}",
            "--allow-metrics=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--strict-readiness=true",
        ]

    def start(self, ready_timeout_s: float = 120.0) -> None:
        """Launch the server and return once its HTTP endpoint reports ready (``ServerError`` if not)."""
        self.process = subprocess.Popen(
            self.command(),
            env=self._binary.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_to,
            stderr=subprocess.STDOUT if self._log_to is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            self.wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"{self.endpoints.http_url}/v2/health/ready"
        while True:
            code = self.process.poll() if self.process else None
            if code is not None:
                raise ServerError(
                    f"tritonserver exited with status {code} before it was ready; its log says why "
                    "(a model that failed to load, a port in use)"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver was not ready at {url} within {timeout_s:.0f} s")
            time.sleep(0.2)

    def terminate(self) -> None:
        """Ask the server to shut down (SIGTERM): it refuses new requests and finishes those in flight."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Block until the server process exits; its exit status."""
        return self.process.wait() if self.process is not None else 0

    def stop(self) -> int | None:
        """Terminate, wait up to the exit timeout (+10 s), then kill the group; clean /dev/shm."""
        code = None
        if self.process is not None:
            self.terminate()
            try:
                code = self.process.wait(self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not exit in time; killing its process group")
            self._kill_group()
        self.remove_shared_memory()
        return code

    def _kill_group(self) -> None:
        """SIGKILL whatever is left of the server's session (stubs included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def remove_shared_memory(self) -> list[str]:
        removed = glob.glob(f"/dev/shm/{self.shm_prefix}*")
        for path in removed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return removed

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
