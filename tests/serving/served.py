"""`nrp serve` processes for the serving tests: free loopback ports, readiness, and a stop that always
leaves nothing behind (SIGTERM, then SIGKILL for it and every descendant; its /dev/shm regions removed)."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from nrp_deploy.serving.triton_server import Endpoints, free_ports

READY_TIMEOUT_S = 180


@dataclass
class Served:
    """An `nrp serve` process started by a test."""

    process: subprocess.Popen
    endpoints: Endpoints
    log: Path

    @property
    def http(self) -> str:
        return self.endpoints.http_url

    @property
    def grpc(self) -> str:
        return self.endpoints.grpc_url

    def shm_regions(self) -> list[str]:
        return glob.glob(f"/dev/shm/nrp_{self.process.pid}_*")

    def tree(self) -> list[int]:
        """nrp serve and its live descendants (tritonserver, the backend stubs)."""
        parents = {pid: ppid for pid, (ppid, _) in _processes().items()}
        found = [self.process.pid] if self.process.pid in parents else []
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor != self.process.pid:
                ancestor = parents.get(ancestor)
            if ancestor == self.process.pid:
                found.append(pid)
        return found

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL it and every descendant; remove the shared memory it made."""
        tree = self.tree()
        code = None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.process.wait(60)
        for pid in tree:
            if pid in alive(tree):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait()
        for path in self.shm_regions():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return code

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            table[int(Path(stat).parent.name)] = (int(fields[1]), fields[0])
    return table


def alive(pids: list[int]) -> list[int]:
    """The given processes that still run (zombies count as gone)."""
    table = _processes()
    return [pid for pid in pids if pid in table and table[pid][1] != "Z"]


def start_serve(log_dir: Path, model: Path, *extra: str) -> Served:
    """`python -m nrp_deploy serve` on free ports; returns once the model is ready."""
    http, grpc, metrics = free_ports(3)
    log = log_dir / f"serve-{http}.log"
    command = [
        sys.executable, "-m", "nrp_deploy", "serve", "--model", str(model), "--threads", "1",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra,
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(process, Endpoints("127.0.0.1", http, grpc, metrics), log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    url = f"{served.http}/v2/models/nrp_purifier/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            served.stop()
            pytest.fail(f"nrp serve exited with {process.returncode}:\n{served.log_tail()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            if reply.status == 200:
                return served
        time.sleep(0.25)
    served.stop()
    pytest.fail(f"nrp serve not ready after {READY_TIMEOUT_S} s:\n{served.log_tail()}")
