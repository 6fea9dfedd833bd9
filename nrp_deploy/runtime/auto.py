"""``backend="auto"`` / ``precision="auto"``: open the fastest backend and precision that pass here.

On a CPU machine (no CUDA device, or ``device="cpu"``) the candidates are every installed CPU backend
(ONNX Runtime, OpenVINO, eager torch) at every precision it runs (FP32; INT8 Q/DQ; on OpenVINO, BF16
arithmetic on the FP32 model) whose artifact is at hand: the source itself, an artifact in the cache or
shipped with the package, or the FP32 export made on first use as before. Auto makes no INT8 artifact of
its own: quantisation is a calibration job (tens of seconds to minutes, torch and the export tools, images
that should look like the deployment's), so it stays the user's decision, taken once (one CPU load at
``precision="int8"`` caches it); the package ships the default purifier's INT8, so that one needs neither.
A candidate whose fidelity verdict FAILs (the artifact's sidecar, or BF16's verdict measured here) is
rejected, as is one that cannot open; the rest are timed briefly on one input of the model's optimal
shape (1x3x224x224 for dynamic models): a warm-up call each, then up to ``TIMED_RUNS`` interleaved rounds
of one call each (a busy moment on the machine slows all of them alike), a candidate ``GIVE_UP_RATIO`` times
slower than the fastest in the first round leaving the rounds; the lowest median wins. The
choice, its timings and the rejections are a machine record (``machine_records``), kept per source,
request and machine (CPU model, ISA flags, library versions) plus the candidates' artifacts, so a second
load opens the winner without timing, and a new CPU, library or artifact times again.

An explicit backend or precision always wins: auto then ranges over the other one only. With both explicit
nothing is chosen. ``precision=None`` is explicit too: the model's own (an artifact's, FP32 for a
checkpoint), what callers that forward an unset precision (evaluation, interop) have always meant.
``NRP_DEPLOY_AUTO=order`` skips the timing: auto then opens the first backend of ``AUTO_ORDER`` that
works, at the model's own precision, as it did before timing existed; for deployments that need a fixed
start-up cost or a fixed backend. GPU machines keep that order too (TensorRT, then ONNX Runtime on CUDA,
then torch): the timed choice covers CPUs only for now.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrp_deploy.artifacts.cache import find_cached_onnx, onnx_label
from nrp_deploy.artifacts.metadata import PRECISIONS, read_metadata, utc_now
from nrp_deploy.artifacts.sources import ModelSource
from nrp_deploy.errors import BackendUnavailableError, InputError, NRPDeployError
from nrp_deploy.kernels.cuda_api import cuda_device_count
from nrp_deploy.runtime.backends import AUTO_ORDER, BACKENDS, Backend, open_backend
from nrp_deploy.runtime.backends.options import BackendOptions, OpenVinoOptions
from nrp_deploy.runtime.machine_records import machine_identity, read_record, records_dir, write_record

log = logging.getLogger(__name__)

MODE_ENV = "NRP_DEPLOY_AUTO"
MODES = ("timed", "order")
#: The CPU backends auto times, each with the (model precision, arithmetic) pairs it runs.
CPU_VARIANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "onnxruntime": (("fp32", "fp32"), ("int8", "int8")),
    "openvino": (("fp32", "fp32"), ("fp32", "bf16"), ("int8", "int8")),
    "torch": (("fp32", "fp32"),),
}
#: The precisions the timed choice runs; a model asked for or made at another (fp16) takes ``AUTO_ORDER``.
TIMED_PRECISIONS = frozenset(p for variants in CPU_VARIANTS.values() for p, a in variants if p == a)
#: The module each CPU backend imports, looked up (not imported) to tell whether it is installed.
_ENGINE_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}
#: The (batch, height, width) timed for a model without a shape profile of its own.
DEFAULT_SHAPE = (1, 224, 224)
TIMED_RUNS = 3
GIVE_UP_RATIO = 2.0


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: a backend, the model precision it loads and the arithmetic it runs."""

    backend: str
    precision: str
    arithmetic: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.arithmetic}"


@dataclass(frozen=True)
class AutoChoice:
    """What auto chose and why: each timed candidate's median (ms, at ``shape``), each rejected one's reason,
    and ``how`` the choice was made (``timed`` now, ``cached`` from an earlier timing, ``only`` candidate)."""

    chosen: str
    timings_ms: dict[str, float]
    rejected: dict[str, str]
    shape: tuple[int, ...]
    how: str
    measured: str

    def summary(self) -> str:
        """One paragraph: the choice, the timings fastest first, the rejections."""
        ranked = sorted(self.timings_ms.items(), key=lambda item: item[1])
        best = ranked[0][1] if ranked else 0.0
        timed = ", ".join(
            f"{label} {ms:.1f} ms" + ("" if ms == best else f" ({ms / best:.1f}x)") for label, ms in ranked
        )
        batch, height, width = self.shape
        shape = f"{height}x{width}, batch {batch}"
        why = {
            "timed": f"fastest at {shape}, timed now",
            "cached": f"fastest at {shape}, timed {self.measured} (cached)",
            "only": "the only candidate that passed (not timed)",
        }[self.how]
        text = f"auto chose {self.chosen}: {why}"
        if len(ranked) > 1:
            text += f"; medians: {timed}"
        if self.rejected:
            text += "; not used: " + "; ".join(f"{label}: {why}" for label, why in self.rejected.items())
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], how: str) -> AutoChoice:
        return cls(
            chosen=str(data["chosen"]),
            timings_ms={str(k): float(v) for k, v in data["timings_ms"].items()},
            rejected={str(k): str(v) for k, v in data["rejected"].items()},
            shape=tuple(int(d) for d in data["shape"]),
            how=how,
            measured=str(data["measured"]),
        )


def auto_mode() -> str:
    """``timed`` (default) or ``order``, from ``$NRP_DEPLOY_AUTO``; anything else is an ``InputError``."""
    mode = os.environ.get(MODE_ENV, "timed").strip().lower() or "timed"
    if mode not in MODES:
        raise InputError(f"{MODE_ENV} must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def open_chosen(
    backend: str,
    source: ModelSource,
    precision: str | None,
    device: str | None,
    options: BackendOptions | Mapping[str, Any],
) -> tuple[Backend, AutoChoice | None]:
    """An inactive backend for ``source`` (active when auto timed it), and what auto chose (None when
    nothing was chosen: both given, the preference order, a GPU). ``precision``: ``auto`` (any that
    passes), None (the model's own) or one of ``PRECISIONS``."""
    if backend != "auto" and backend not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}"
        )
    if precision == "auto":
        precision = None
    elif precision is None and source.kind != "engine":
        precision = source.precision or "fp32"
    elif precision is not None and precision not in PRECISIONS:
        raise InputError(f"precision must be auto or one of {', '.join(PRECISIONS)}, not {precision!r}")
    if backend != "auto" and precision is not None:
        return open_backend(backend, source, precision, device, options), None
    fixed = precision or (source.precision if source.kind == "onnx" else None)  # an artifact is one precision
    timed = (
        auto_mode() == "timed"
        and source.kind != "engine"
        and (device == "cpu" or (device is None and cuda_device_count() == 0))
        and backend in ("auto", *CPU_VARIANTS)
        and (fixed is None or fixed in TIMED_PRECISIONS)
        and not _arithmetic_given(options)
    )
    if not timed:
        if backend != "auto":
            return open_backend(backend, source, precision, device, options), None
        return _first_in_order(source, precision, device, options), None
    return _timed_choice(backend, source, precision, options)


def _first_in_order(
    source: ModelSource,
    precision: str | None,
    device: str | None,
    options: BackendOptions | Mapping[str, Any],
) -> Backend:
    """The first backend of ``AUTO_ORDER`` that opens (the choice on GPUs and with ``NRP_DEPLOY_AUTO=order``)."""
    reasons = []
    for candidate in AUTO_ORDER:
        try:
            opened = open_backend(candidate, source, precision, device, options)
        except BackendUnavailableError as exc:
            reasons.append(f"{candidate}: {exc}")
            log.debug("backend auto: skipping %s: %s", candidate, exc)
            continue
        log.info("backend auto: chose %s on %s (preference order)", opened.name, opened.device)
        return opened
    raise BackendUnavailableError("no backend can run this model here:\n  " + "\n  ".join(reasons))


def _arithmetic_given(options: BackendOptions | Mapping[str, Any]) -> bool:
    """Whether the caller's options already fix OpenVINO's arithmetic (then it is not auto's to choose)."""
    if isinstance(options, OpenVinoOptions):
        return options.inference_precision is not None
    return isinstance(options, Mapping) and options.get("inference_precision") is not None


# -- the timed choice ----------------------------------------------------------------------------------


def candidates(
    backend: str, source: ModelSource, precision: str | None
) -> tuple[list[tuple[Candidate, str | None]], dict[str, str]]:
    """The CPU candidates for this request, each with the sha256 of its artifact (None: made on first use),
    and the ones left out with the reason (not installed, no artifact at hand)."""
    found: list[tuple[Candidate, str | None]] = []
    left_out: dict[str, str] = {}
    for name in CPU_VARIANTS if backend == "auto" else (backend,):
        for model_precision, arithmetic in CPU_VARIANTS[name]:
            candidate = Candidate(name, model_precision, arithmetic)
            if precision is not None and (precision, precision) != (model_precision, arithmetic):
                continue  # another precision was asked for
            if source.kind == "onnx" and (source.precision or "fp32") != model_precision:
                continue  # an artifact is one precision (fp32 when its sidecar does not say)
            if name == "torch" and source.kind != "checkpoint":
                continue  # torch runs checkpoints only
            if not _installed(name):
                left_out[candidate.label] = f"{name} is not installed"
                continue
            artifact, reason = _artifact(source, model_precision, asked=precision is not None)
            if reason is not None:
                left_out[candidate.label] = reason
                continue
            found.append((candidate, artifact))
    return found, left_out


def _installed(backend: str) -> bool:
    try:
        return importlib.util.find_spec(_ENGINE_MODULE[backend]) is not None
    except (ImportError, ValueError):
        return False


def _artifact(source: ModelSource, precision: str, asked: bool) -> tuple[str | None, str | None]:
    """(sha256 of the artifact that runs ``source`` at ``precision`` or None, None) or (None, why there is
    none at hand). A checkpoint's FP32 ONNX, and one of the precision ``asked`` for, is made on first use, as
    for an explicit backend; an INT8 that was not asked for is not."""
    if source.kind == "onnx":
        return source.sha256, None
    label = onnx_label(precision, "ort")
    found = find_cached_onnx(source.sha256, label, precision, None)
    if found is not None:
        return read_metadata(found).artifact_sha256, None
    if precision == "fp32" or asked:
        return None, None
    return None, (
        "no CPU INT8 artifact of this checkpoint in the cache (auto exports none; one load at precision "
        "int8 on the CPU, e.g. `nrp purify --precision int8 --device cpu`, exports it there)"
    )


def _timed_choice(
    backend: str, source: ModelSource, precision: str | None, options: BackendOptions | Mapping[str, Any]
) -> tuple[Backend, AutoChoice]:
    found, left_out = candidates(backend, source, precision)
    if not found:
        asked = f"backend {backend}" + (f" at {precision}" if precision else "")
        raise BackendUnavailableError(
            f"no candidate for {asked} can run {source.path} here:\n  "
            + "\n  ".join(f"{label}: {why}" for label, why in left_out.items())
        )
    threads = options.threads if isinstance(options, BackendOptions) else options.get("threads")
    request = {
        "source": source.sha256,
        "backend": backend,
        "precision": precision,
        "threads": threads,
        # other options can rule candidates out (another backend's typed options), so they key it too
        "options": repr(options) if isinstance(options, BackendOptions) else repr(sorted(options.items())),
    }
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
    record = records_dir() / f"auto-{source.sha256[:16]}-{digest}.json"
    key = {
        **request,
        "candidates": [[c.label, artifact] for c, artifact in found],
        "machine": machine_identity(),
    }
    cached = read_record(record, key)
    if cached is not None:
        reopened = _reopen(cached, found, source, options, record)
        if reopened is not None:
            return reopened
    opened, choice = _time_candidates(found, left_out, source, options)
    if choice.timings_ms:
        write_record(record, key, {**choice.to_dict(), "source_name": source.name})
    log.info("%s", choice.summary())
    return opened, choice


def _reopen(
    cached: dict[str, Any],
    found: list[tuple[Candidate, str | None]],
    source: ModelSource,
    options: BackendOptions | Mapping[str, Any],
    record: os.PathLike[str],
) -> tuple[Backend, AutoChoice] | None:
    """The recorded winner, opened; None (time again) when the record is unusable or it no longer opens."""
    try:
        choice = AutoChoice.from_dict(cached, how="cached")
        (winner,) = (c for c, _ in found if c.label == choice.chosen)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("ignoring auto record %s (%s); timing again", record, exc)
        return None
    try:
        opened = _open_candidate(winner, source, options)
    except NRPDeployError as exc:
        log.warning("auto's recorded choice %s no longer opens (%s); timing again", winner.label, exc)
        return None
    log.info("%s", choice.summary())
    return opened, choice


def _open_candidate(
    candidate: Candidate, source: ModelSource, options: BackendOptions | Mapping[str, Any]
) -> Backend:
    """Open one candidate on the CPU. Auto never picks a FAILed artifact it found itself: ``allow_failed``
    holds only for the source the caller named, at its own precision."""
    if source.kind != "onnx":
        source = dataclasses.replace(source, allow_failed=False)
    if candidate.arithmetic == "bf16":
        source = dataclasses.replace(source, allow_failed=False)
        options = _with_bf16(options)
    return open_backend(candidate.backend, source, candidate.precision, "cpu", options)


def _with_bf16(options: BackendOptions | Mapping[str, Any]) -> BackendOptions | Mapping[str, Any]:
    if isinstance(options, BackendOptions):
        return dataclasses.replace(OpenVinoOptions.coerce(options), inference_precision="bf16")
    return {**options, "inference_precision": "bf16"}


def _time_candidates(
    found: list[tuple[Candidate, str | None]],
    left_out: dict[str, str],
    source: ModelSource,
    options: BackendOptions | Mapping[str, Any],
) -> tuple[Backend, AutoChoice]:
    """Open and check every candidate, time those that open in interleaved rounds (so a busy moment on the
    machine slows all of them alike), keep the fastest open and close the rest."""
    rejected = dict(left_out)
    live: dict[str, tuple[Candidate, Backend]] = {}
    for candidate, _ in found:
        try:
            opened = _open_candidate(candidate, source, options)
            opened.activate()
        except NRPDeployError as exc:
            rejected[candidate.label] = str(exc).splitlines()[0]
            log.info("auto: %s not used: %s", candidate.label, exc)
            continue
        live[candidate.label] = (candidate, opened)
    if not live:
        raise BackendUnavailableError(
            f"no candidate can run {source.path} here:\n  "
            + "\n  ".join(f"{label}: {why}" for label, why in rejected.items())
        )
    profile = next((b.profile for _, b in live.values() if b.profile is not None), None)
    shape = tuple(profile.opt) if profile is not None else DEFAULT_SHAPE
    if len(live) == 1:
        ((candidate, opened),) = live.values()
        return opened, AutoChoice(candidate.label, {}, rejected, shape, "only", utc_now())
    x = np.random.default_rng(0).random((shape[0], 3, shape[1], shape[2]), dtype=np.float32)
    runs = _timed_rounds({label: b for label, (_, b) in live.items()}, x, rejected)
    timings = {label: statistics.median(times) for label, times in runs.items()}
    if not timings:
        for _, opened in live.values():
            opened.deactivate()
        raise BackendUnavailableError(
            f"no candidate could run {source.path} here:\n  "
            + "\n  ".join(f"{label}: {why}" for label, why in rejected.items())
        )
    chosen = min(timings, key=timings.__getitem__)
    for label, (_, opened) in live.items():
        if label != chosen:
            opened.deactivate()
    return live[chosen][1], AutoChoice(chosen, timings, rejected, shape, "timed", utc_now())


def _timed_rounds(
    backends: dict[str, Backend], x: np.ndarray, rejected: dict[str, str]
) -> dict[str, list[float]]:
    """Milliseconds of up to ``TIMED_RUNS`` rounds of one call per backend, after a warm-up call each, the
    order rotating each round. A backend that fails is rejected; one ``GIVE_UP_RATIO`` times slower than the
    fastest in the first round keeps that one timing and leaves the rounds."""
    runs: dict[str, list[float]] = {}
    for label, backend in backends.items():
        try:
            backend.infer(x)
        except NRPDeployError as exc:
            rejected[label] = str(exc).splitlines()[0]
            continue
        runs[label] = []
    active = list(runs)
    for round_index in range(TIMED_RUNS):
        shift = round_index % len(active) if active else 0
        for label in active[shift:] + active[:shift]:
            try:
                runs[label].append(time_call(backends[label], x))
            except NRPDeployError as exc:
                rejected[label] = str(exc).splitlines()[0]
                del runs[label]
        active = [label for label in active if label in runs]
        if round_index == 0 and active:
            fastest = min(runs[label][0] for label in active)
            active = [label for label in active if runs[label][0] <= GIVE_UP_RATIO * fastest]
    return runs


def time_call(backend: Backend, x: np.ndarray) -> float:
    """Milliseconds of one ``backend.infer(x)`` by the wall clock."""
    start = time.perf_counter()
    backend.infer(x)
    return (time.perf_counter() - start) * 1e3


def recorded_choices() -> list[dict[str, Any]]:
    """Auto's choices recorded in this cache folder (for ``nrp info``): the model, the request, the summary,
    and whether the record still holds here (``current``: made on this machine and software stack)."""
    here = machine_identity()
    found = []
    for path in sorted(records_dir().glob("auto-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            key, value = data["key"], data["value"]
            choice = AutoChoice.from_dict(value, how="cached")
            entry = {
                "model": str(value.get("source_name", key["source"][:16])),
                "backend": key["backend"],
                "precision": key["precision"] or "auto",
                "threads": key["threads"],
                "chosen": choice.chosen,
                "summary": choice.summary(),
                "current": key.get("machine") == here,
                "record": str(path),
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.debug("skipping unreadable auto record %s: %s", path, exc)
            continue
        found.append(entry)
    return found
