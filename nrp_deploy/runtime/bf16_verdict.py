"""The fidelity verdict of BF16 arithmetic on an FP32 artifact, measured on this machine and cached.

OpenVINO can run an FP32 ONNX with BF16 arithmetic (``OpenVinoOptions(inference_precision="bf16")``). That
is no separate artifact with an export-time verdict: its error depends on the CPU's BF16 kernels (AVX512-BF16
or AMX) and OpenVINO's version. So it is judged where it runs, like an artifact: the same FP32 artifact is
run with FP32 and with BF16 arithmetic on the example photos (four 224x224 images, the pictures the
export's calibration and held-out crops come from), and the PSNR of the raw outputs is judged against
``DEFAULT_MIN_PSNR_DB["bf16"]`` with ``metadata.judge``, the rule every artifact's verdict follows. The
reference is the FP32 artifact rather than FP32 torch (which the runtime cannot import): that artifact
passed its own check at >= 80 dB against torch, tens of dB closer than any BF16 error. The verdict is a
machine record (``machine_records``): measured once per artifact, machine and software stack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nrp_deploy.artifacts.metadata import DEFAULT_MIN_PSNR_DB, Fidelity, Verdict, judge, psnr_db
from nrp_deploy.assets import examples_dir
from nrp_deploy.images import read_image
from nrp_deploy.runtime import prepost
from nrp_deploy.runtime.backends.base import Backend
from nrp_deploy.runtime.machine_records import machine_identity, read_record, records_dir, write_record

log = logging.getLogger(__name__)

MIN_PSNR_DB = DEFAULT_MIN_PSNR_DB["bf16"]


def check_images() -> np.ndarray:
    """The example photos as one float32 NCHW batch in [0, 1]."""
    photos = [read_image(path) for path in sorted(examples_dir().glob("*.png"))]
    return prepost.uint8_to_float(np.stack(photos))


def bf16_verdict(path: Path, artifact_sha256: str, open_backend: Callable[[str], Backend]) -> Verdict:
    """The verdict of BF16 arithmetic on the FP32 artifact ``path`` here: cached, else measured now.

    ``open_backend(arithmetic)`` returns an inactive backend running ``path`` with ``fp32`` or ``bf16``
    arithmetic (the OpenVINO backend passes itself in, so this module needs no engine of its own).
    """
    key = {"artifact_sha256": artifact_sha256, "arithmetic": "bf16", "machine": machine_identity()}
    record = records_dir() / f"bf16-verdict-{artifact_sha256[:16]}.json"
    cached = read_record(record, key)
    if cached is not None:
        try:
            return Verdict(passed=bool(cached["passed"]), line=str(cached["line"]))
        except KeyError:
            log.warning("ignoring machine record %s without a verdict; measuring again", record)
    images = check_images()
    log.info("measuring BF16 arithmetic against FP32 on %s (once per machine)", path.name)
    candidate, reference = (_outputs(open_backend(arithmetic), images) for arithmetic in ("bf16", "fp32"))
    fidelity = _fidelity(candidate, reference)
    described = f"{len(images)} example photos of 224x224 px"
    verdict = judge("bf16", path.name, fidelity, MIN_PSNR_DB, described, reference="FP32 arithmetic")
    write_record(record, key, {"passed": verdict.passed, "line": verdict.line, "psnr_db": fidelity.psnr_db})
    log.info("%s", verdict.line)
    return verdict


def _outputs(backend: Backend, images: np.ndarray) -> np.ndarray:
    backend.activate()
    try:
        return np.concatenate([backend.infer(images[i : i + 1]) for i in range(len(images))])
    finally:
        backend.deactivate()


def _fidelity(actual: np.ndarray, expected: np.ndarray) -> Fidelity:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    if not np.isfinite(diff).all():
        return Fidelity(max_abs=float("inf"), mean_abs=float("inf"), psnr_db=float("-inf"))
    return Fidelity(float(diff.max()), float(diff.mean()), psnr_db(float(np.mean(diff * diff))))
