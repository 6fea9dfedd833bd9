"""The metadata sidecar every exported artifact carries (``<artifact>.json``), its verdict line, and PSNR.

Torch-free and ONNX-free on purpose: the runtime reads this file to learn what an artifact is (architecture,
precision, I/O dtype, where it came from) and to refuse one whose bytes no longer match what was measured,
without importing any export tooling; export writes it. The sidecar records:

- the artifact's own sha256 (a file edited or swapped after export is detected: ``verify_artifact``),
- the source checkpoint and its sha256, the architecture and config (``ModelSpec.to_dict()``), the opset,
- the precision (``fp32`` / ``fp16`` / ``int8``) and I/O dtype, the calibration summary,
- the versions of the tools that made it,
- the fidelity against the FP32 torch module on held-out images, and a one-line verdict against a PSNR
  threshold, so a user sees at once whether the artifact is fit to deploy.

PSNR is measured on the raw network output (before the [0, 1] clamp of post-processing) with peak 1, the
range of an image: a clamp could hide differences outside [0, 1]. Identical outputs report ``PSNR_CAP_DB``
rather than infinity, which JSON cannot hold. ``psnr`` is the package's one PSNR: the evaluation's image
metrics and the benchmark's fidelity column use it too, uncapped.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.errors import FidelityError, InputError, MetadataError, StaleArtifactError
from nrp_deploy.fileutil import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: The precisions an artifact is made at (and a backend runs); the CLI's choices come from here too.
PRECISIONS = ("fp32", "fp16", "int8")
#: The opset artifacts are exported at unless asked otherwise. Opset 20: accepted by ONNX Runtime, TensorRT 11
#: and the TensorRT 10 parsers Jetson ships, and above the opset 19 that FP16 Q/DQ scales need, so FP16 and
#: INT8 conversion never have to upgrade it.
DEFAULT_OPSET = 20
#: Default minimum PSNR (dB) against FP32 for an artifact to pass. FP32 ONNX differs from torch only by float
#: summation order (max abs error ~1e-6 on images), so 80 dB flags a broken export, not rounding. ``bf16`` is
#: no artifact precision but OpenVINO's BF16 arithmetic on an FP32 artifact (``runtime.bf16_verdict``): its
#: 8-bit significand sits between FP16's 11 bits and INT8's 8-bit grid per tensor, and so does its bar.
DEFAULT_MIN_PSNR_DB: dict[str, float] = {"fp32": 80.0, "fp16": 50.0, "bf16": 40.0, "int8": 35.0}
PSNR_CAP_DB = 200.0
#: Distributions whose versions are recorded (absent ones are recorded as null).
TOOLS = ("torch", "onnx", "onnxruntime", "nvidia-modelopt", "onnxslim", "nrp-deploy")


@dataclass(frozen=True)
class Fidelity:
    """How far an artifact's output is from the FP32 torch output: max / mean abs error and PSNR (dB)."""

    max_abs: float
    mean_abs: float
    psnr_db: float


def psnr_db(mse: float, peak: float = 1.0, cap: float | None = PSNR_CAP_DB) -> float:
    """10 log10(peak^2 / mse) in dB, at most ``cap`` (``PSNR_CAP_DB``: identical outputs stay a finite
    number a sidecar can hold); ``cap=None`` gives ``inf`` for identical outputs."""
    if mse <= 0.0:
        return math.inf if cap is None else cap
    value = 10.0 * math.log10(peak * peak / mse)
    return value if cap is None else min(cap, value)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB of two arrays of one shape (images, NCHW batches); ``inf`` when they are equal.

    The peak is ``data_range`` if given, else 255 for uint8 and 1 for float arrays.
    """
    if a.shape != b.shape:
        raise InputError(f"PSNR compares two arrays of one shape, got {a.shape} and {b.shape}")
    peak = data_range if data_range is not None else (255.0 if a.dtype == np.uint8 else 1.0)
    diff = a.astype(np.float64) - b.astype(np.float64)
    return psnr_db(float(np.mean(diff * diff)), peak, cap=None)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    line: str


def judge(
    precision: str,
    artifact_name: str,
    fidelity: Fidelity,
    min_psnr_db: float,
    images: str,
    reference: str = "FP32 torch",
) -> Verdict:
    """The one-line verdict: PASS/FAIL, the PSNR against its threshold, the reference and what it was
    measured on."""
    passed = math.isfinite(fidelity.max_abs) and fidelity.psnr_db >= min_psnr_db
    word = "PASS" if passed else "FAIL"
    relation = ">=" if passed else "<"
    line = (
        f"{word} {precision} {artifact_name}: PSNR {fidelity.psnr_db:.1f} dB {relation} {min_psnr_db:.1f} dB "
        f"vs {reference} (max abs {fidelity.max_abs:.2e}, mean abs {fidelity.mean_abs:.2e}) on {images}"
    )
    return Verdict(passed, line)


#: What to do about an exported artifact that FAILed its check.
REEXPORT = "Re-export it (other calibration images, a higher precision)"


def check_verdict(path: Path, verdict: Verdict, allow_failed: bool, remedy: str = REEXPORT) -> None:
    """Refuse an artifact (or arithmetic) whose fidelity check FAILed, unless the caller allows it (then
    warn); ``remedy`` says what to do instead."""
    if verdict.passed:
        return
    if not allow_failed:
        raise FidelityError(
            f"{path} failed its fidelity check and is not used: {verdict.line}. {remedy}, or pass "
            "allow_failed=True (--allow-failed) to use it anyway"
        )
    log.warning("using %s although it failed its fidelity check (allow_failed): %s", path, verdict.line)


@dataclass
class ArtifactMetadata:
    """Everything recorded about one artifact; ``to_dict`` / ``from_dict`` are the sidecar's JSON form."""

    artifact: str
    artifact_sha256: str
    precision: str
    io_dtype: str
    opset: int
    source: dict[str, Any]
    model: dict[str, Any]
    fidelity: Fidelity
    fidelity_images: dict[str, Any]
    min_psnr_db: float
    verdict: Verdict
    calibration: dict[str, Any] | None = None
    derived_from: dict[str, Any] | None = None
    tools: dict[str, str | None] = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactMetadata:
        values = dict(data)
        values["fidelity"] = Fidelity(**values["fidelity"])
        values["verdict"] = Verdict(**values["verdict"])
        return cls(**values)


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the export tool chain, read from package metadata (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """Where an artifact's metadata lives: the artifact's path with ``.json`` appended."""
    return Path(os.fspath(artifact) + ".json")


def write_metadata(artifact: str | os.PathLike[str], metadata: ArtifactMetadata) -> Path:
    path = sidecar_path(artifact)
    write_json_atomic(path, metadata.to_dict())
    return path


def read_sidecar(artifact: str | os.PathLike[str], made_by: str) -> tuple[Path, dict[str, Any]]:
    """The parsed JSON object beside ``artifact`` (ONNX or engine); ``MetadataError`` naming the file when it
    is missing (``made_by`` says which command writes it), unreadable or not a JSON object."""
    path = sidecar_path(artifact)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MetadataError(f"{artifact} has no metadata file {path} ({made_by})") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MetadataError(f"{path} holds a JSON {type(data).__name__}, not a metadata object")
    return path, data


def read_metadata(artifact: str | os.PathLike[str]) -> ArtifactMetadata:
    """The sidecar of ``artifact``; ``MetadataError`` naming the file if it is missing or malformed."""
    path, data = read_sidecar(artifact, made_by="export it with `nrp export`")
    if data.get("format") != FORMAT_VERSION:
        found = data.get("format")
        raise MetadataError(f"{path}: unsupported metadata format {found!r} (expected {FORMAT_VERSION})")
    try:
        metadata = ArtifactMetadata.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise MetadataError(f"{path}: malformed metadata ({type(exc).__name__}: {exc})") from exc
    if metadata.precision not in PRECISIONS:
        raise MetadataError(f"{path}: unknown precision {metadata.precision!r}")
    return metadata


def verify_artifact(artifact: str | os.PathLike[str]) -> ArtifactMetadata:
    """Read the sidecar and check the artifact's bytes are the ones it describes.

    Raises ``StaleArtifactError`` when the file was changed or replaced after export: its recorded fidelity
    would then describe another model.
    """
    if not Path(artifact).is_file():
        raise MetadataError(f"artifact {artifact} does not exist")
    metadata = read_metadata(artifact)
    actual = sha256_file(artifact)
    if actual != metadata.artifact_sha256:
        raise StaleArtifactError(
            f"{artifact} has sha256 {actual}, but its metadata {sidecar_path(artifact)} describes "
            f"{metadata.artifact_sha256}: the file changed after export; export it again"
        )
    return metadata
