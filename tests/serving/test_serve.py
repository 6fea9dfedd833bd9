"""`nrp serve` on loopback: byte equality with the in-process Purifier, replays, concurrency, bad requests,
dying clients, metrics, `nrp purify --server`, and a clean SIGTERM shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as thttp
from served import Served, alive, start_serve

from nrp_deploy.images import read_image, write_png
from nrp_deploy.runtime import DynamicDefense, load_purifier
from nrp_deploy.serving import PurifierClient, ServerError

pytestmark = pytest.mark.timeout(300)
MAX_PIXELS = 4096  # the module server's --max-pixels: 64 x 64


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_onnx: Path):
    served = start_serve(
        tmp_path_factory.mktemp("serve"),
        tiny_onnx,
        "--max-pixels",
        str(MAX_PIXELS),
        "--max-queue-delay-us",
        "2000",
    )
    yield served
    served.stop()
    assert not served.shm_regions()


def _images(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_server_output_equals_in_process_byte_for_byte(server: Served, in_process, scheme: str):
    client = PurifierClient(getattr(server, scheme))
    rng = np.random.default_rng(1)
    for shape in [(1, 16, 16), (2, 20, 24), (3, 33, 17)]:
        images = _images(rng, *shape)
        assert np.array_equal(client.purify(images), in_process(images))
    one = _images(rng, 1, 18, 22)[0]
    assert np.array_equal(client.purify(one), in_process(one))


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_seeded_dynamic_defence_replays_the_in_process_noise(server: Served, in_process, scheme: str):
    client = PurifierClient(getattr(server, scheme))
    images = _images(np.random.default_rng(2), 3, 24, 20)
    for seed, start in [(7, 0), (2**64 - 1, 5)]:
        expected = in_process(images, dynamic=DynamicDefense(seed=seed), start_index=start)
        first = client.purify(images, dynamic=True, seed=seed, start_index=start)
        assert np.array_equal(first, expected)
        assert np.array_equal(client.purify(images, dynamic=True, seed=seed, start_index=start), first)
    fresh = [client.purify(images, dynamic=True) for _ in range(2)]
    assert not np.array_equal(fresh[0], fresh[1])  # no seed: a fresh one per request
    assert not np.array_equal(fresh[0], in_process(images))


def test_32_concurrent_clients_times_8_mixed_requests_none_lost_or_mixed_up(server: Served, in_process):
    clients = {"http": PurifierClient(server.http), "grpc": PurifierClient(server.grpc)}
    sizes = [(16, 16), (24, 20), (32, 32), (17, 29)]
    rng = np.random.default_rng(3)
    plan = []
    for worker in range(32):
        jobs = []
        for request in range(8):
            height, width = sizes[rng.integers(len(sizes))]
            images = _images(rng, int(rng.integers(1, 4)), height, width)
            seed = int(rng.integers(2**32)) if request % 3 == 0 else None
            jobs.append((images, seed))
        plan.append(("http" if worker % 2 else "grpc", jobs))

    def run(worker: int) -> list[np.ndarray]:
        scheme, jobs = plan[worker]
        return [clients[scheme].purify(x, dynamic=seed is not None, seed=seed) for x, seed in jobs]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(run, range(32)))
    for (_, jobs), outputs in zip(plan, results, strict=True):
        assert len(outputs) == 8
        for (images, seed), out in zip(jobs, outputs, strict=True):
            dynamic = DynamicDefense(seed=seed) if seed is not None else None
            assert np.array_equal(out, in_process(images, dynamic=dynamic))


def _raw_infer(server: Served, array: np.ndarray, datatype: str, parameters: dict | None = None) -> str:
    """Send a request that our client would refuse; return the server's error message."""
    client = thttp.InferenceServerClient(f"127.0.0.1:{server.endpoints.http_port}")
    tensor = thttp.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    with pytest.raises(Exception) as caught:
        client.infer("nrp_purifier", [tensor], parameters=parameters)
    return str(caught.value)


def test_bad_requests_are_refused_with_what_to_change_while_good_ones_succeed(server: Served, in_process):
    client = PurifierClient(server.http)
    good = _images(np.random.default_rng(4), 2, 16, 16)
    expected = in_process(good)
    stop = threading.Event()
    outcomes: list[bool] = []
    failures: list[BaseException] = []

    def keep_sending() -> None:
        try:
            while not stop.is_set():
                outcomes.append(bool(np.array_equal(client.purify(good), expected)))
        except BaseException as exc:  # handed to the test thread, raised there
            failures.append(exc)

    workers = [threading.Thread(target=keep_sending) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        u8 = np.zeros((1, 16, 16, 3), np.uint8)
        cases = {
            "data-type is 'FP32', but model 'nrp_purifier' expects 'UINT8'": (
                u8.astype(np.float32),
                "FP32",
                None,
            ),
            "Expected [-1,-1,-1,3]": (np.zeros((1, 16, 16, 4), np.uint8), "UINT8", None),
            "got [2,16,3]": (np.zeros((2, 16, 3), np.uint8), "UINT8", None),
            "is empty": (np.zeros((1, 0, 16, 3), np.uint8), "UINT8", None),
            "exceed the server's limit of 4096": (np.zeros((1, 65, 65, 3), np.uint8), "UINT8", None),
            "batch-size must be <= 8": (np.zeros((9, 16, 16, 3), np.uint8), "UINT8", None),
            "unknown request parameter(s) 'colour'": (u8, "UINT8", {"colour": 1}),
            "send dynamic=true or drop 'seed'": (u8, "UINT8", {"seed": 3}),
            "parameter 'seed' must be an integer 0 <= seed < 2**64": (
                u8,
                "UINT8",
                {"dynamic": True, "seed": -1},
            ),
            "parameter 'dynamic' must be true or false": (u8, "UINT8", {"dynamic": 3}),
        }
        for expected_text, (array, datatype, parameters) in cases.items():
            for _ in range(3):  # bad requests land in dynamic batches next to good ones
                message = _raw_infer(server, array, datatype, parameters)
                assert expected_text in message, message
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert not any(w.is_alive() for w in workers)
    if failures:
        raise failures[0]
    assert outcomes and all(outcomes)
    assert np.array_equal(client.purify(good), expected)


def test_a_batch_that_fails_inside_the_purifier_answers_each_request_and_the_server_stays_up(
    tmp_path, artifacts: Path
):
    """batch_of_one.onnx fails inside ONNX Runtime on a batch of more than one image. Four concurrent
    one-image requests, held in the batcher's 0.3 s queue so they run as one batch, each get an error of
    their own; the server stays up and ready and serves the next requests. ONNX Runtime is named: `auto`
    may pick OpenVINO, which the serving environment has too."""
    model = artifacts / "batch_of_one.onnx"
    served = start_serve(
        tmp_path, model, "--backend", "onnxruntime", "--precision", "fp32", "--max-queue-delay-us", "300000"
    )
    try:
        client = PurifierClient(served.grpc)
        images = _images(np.random.default_rng(9), 4, 16, 16)

        def send(k: int) -> str | None:
            try:
                client.purify(images[k : k + 1])
            except ServerError as exc:
                return str(exc)
            return None

        with ThreadPoolExecutor(4) as pool:
            errors = list(pool.map(send, range(4)))
        batch_failed = "ONNX Runtime failed to run"
        assert all(error and batch_failed in error and "(4, 3, 16, 16)" in error for error in errors), errors
        assert served.process.poll() is None, served.log_tail()
        with urllib.request.urlopen(served.http + "/v2/models/nrp_purifier/ready", timeout=10) as reply:
            assert reply.status == 200
        with load_purifier(model, backend="onnxruntime", precision="fp32", threads=1) as in_process:
            for k in range(2):
                assert np.array_equal(client.purify(images[k : k + 1]), in_process(images[k : k + 1]))
    finally:
        served.stop()


def test_the_client_refuses_bad_input_before_sending(server: Served):
    client = PurifierClient(server.grpc)
    with pytest.raises(Exception, match=r"uint8 \[N, H, W, 3\]"):
        client.purify(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(Exception, match="drop it or leave dynamic on"):
        client.purify(np.zeros((1, 8, 8, 3), np.uint8), dynamic=False, seed=1)
    with pytest.raises(Exception, match="expected http://HOST:PORT or grpc://HOST:PORT"):
        PurifierClient("ftp://127.0.0.1:1")


KILLED_CLIENT = """
import sys, numpy as np
from nrp_deploy.serving import PurifierClient
client = PurifierClient(sys.argv[1])
images = np.random.default_rng(0).integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
print("sending", flush=True)
while True:
    client.purify(images, dynamic=True)
"""


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_client_killed_mid_request_does_not_hurt_the_server(server: Served, in_process, scheme: str):
    for delay in (0.3, 0.7, 1.1):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_CLIENT, getattr(server, scheme)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "sending"
        time.sleep(delay)
        child.kill()
        child.wait(30)
    images = _images(np.random.default_rng(5), 2, 20, 20)
    assert np.array_equal(PurifierClient(server.http).purify(images), in_process(images))
    assert server.process.poll() is None


def test_health_readiness_and_prometheus_metrics(server: Served, in_process):
    images = _images(np.random.default_rng(6), 1, 16, 16)
    PurifierClient(server.grpc).purify(images)
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/nrp_purifier/ready"):
        with urllib.request.urlopen(server.http + path, timeout=10) as reply:
            assert reply.status == 200
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.endpoints.metrics_port}/metrics", timeout=10
    ) as reply:
        metrics = reply.read().decode()
    counts = [line for line in metrics.splitlines() if line.startswith("nv_inference_request_success{")]
    assert any('model="nrp_purifier"' in line and float(line.split()[-1]) >= 1 for line in counts), counts
    assert "nv_inference_queue_duration_us" in metrics


def test_purify_cli_through_the_server_writes_what_in_process_writes(
    server: Served, tiny_onnx: Path, tmp_path
):
    rng = np.random.default_rng(7)
    inputs = tmp_path / "in"
    for k, (height, width) in enumerate([(16, 16), (16, 16), (20, 24), (16, 16), (31, 17)]):
        write_png(inputs / f"sub{k % 2}" / f"img{k}.png", _images(rng, 1, height, width)[0])
    common = ["--dynamic", "--seed", "11", "--batch-size", "2", "--no-progress"]
    nrp = [sys.executable, "-m", "nrp_deploy", "purify", str(inputs)]
    remote = subprocess.run(
        [*nrp, "-o", str(tmp_path / "remote"), "--server", server.grpc, *common],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert remote.returncode == 0, remote.stderr
    local = subprocess.run(
        [*nrp, "-o", str(tmp_path / "local"), "--model", str(tiny_onnx), "--threads", "1", *common],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert local.returncode == 0, local.stderr
    written = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    assert len(written) == 5
    assert written == sorted(p.relative_to(tmp_path / "remote") for p in (tmp_path / "remote").rglob("*.png"))
    for rel in written:
        assert np.array_equal(read_image(tmp_path / "remote" / rel), read_image(tmp_path / "local" / rel))
    refused = subprocess.run(
        [*nrp, "-o", str(tmp_path / "x"), "--server", server.http, "--backend", "torch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--backend configure an in-process purifier" in refused.stderr


def test_purify_cli_names_a_server_that_does_not_answer(tmp_path):
    write_png(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8))
    proc = subprocess.run(
        [sys.executable, "-m", "nrp_deploy", "purify", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
         "--server", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "no ready 'nrp_purifier' model at http://127.0.0.1:9" in proc.stderr


def test_sigterm_finishes_requests_in_flight_and_leaves_nothing_behind(tmp_path, tiny_onnx: Path, in_process):
    served = start_serve(tmp_path, tiny_onnx, "--max-queue-delay-us", "300000", "--instances", "2")
    try:
        processes = served.tree()
        assert len(processes) >= 4  # nrp serve, tritonserver, a stub per instance
        images = _images(np.random.default_rng(8), 8, 64, 64)
        client = PurifierClient(served.grpc)
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(client.purify, images, True, 5) for _ in range(4)]
            time.sleep(0.1)  # the requests wait in the batcher's 0.3 s queue
            served.process.terminate()
            results = [f.result(timeout=120) for f in pending]
        expected = in_process(images, dynamic=DynamicDefense(seed=5))
        assert all(np.array_equal(r, expected) for r in results)
        assert served.process.wait(90) == 0
        deadline = time.monotonic() + 30
        while alive(processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive(processes) == []
        assert served.shm_regions() == []
        with pytest.raises(ServerError):
            PurifierClient(served.http, timeout_s=5).purify(images[:1])
    finally:
        served.stop()


def test_serve_refuses_a_model_it_cannot_find(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nrp_deploy", "serve", "--model", str(tmp_path / "missing.onnx")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "missing.onnx" in proc.stderr, proc.stderr


def test_serve_exports_a_checkpoint_once_or_says_what_to_install(artifacts: Path, tmp_path):
    """The serving environment has no torch: a checkpoint without a cached ONNX is refused up front."""
    proc = subprocess.run(
        [sys.executable, "-m", "nrp_deploy", "serve", "--model", str(artifacts / "tiny.pth")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NRP_DEPLOY_CACHE": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 2 and "pass a prebuilt .onnx" in proc.stderr, proc.stderr
