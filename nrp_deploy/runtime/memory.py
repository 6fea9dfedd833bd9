"""How much memory one backend call may take, and how much an image's activations need (torch-free).

A purifier runs every convolution at full resolution, so its activations grow with the pixel count: one
3840x2160 photo through the default NRP_resG (nf=64) on ONNX Runtime peaks at 7.1 GB, an 8K photo would
need four times that. The Purifier compares an estimate of that memory with a budget and tiles an image whose
estimate exceeds it (``Purifier._layout``); the tiling is backend-independent and exact with the default
overlap (see ``tiling``), so only peak memory and time change.

The estimate is bytes per pixel = the widest activation's channels (``ModelSpec.widest_channels``) x 4
bytes (float32) x a live-tensor factor per backend: how many such feature maps the backend holds at once at
its peak. The factors were measured as the rise of the peak resident set over one untiled image, linear in
the pixel count from 512x512 to 1024x2048 (``benchmarks/auto_tiling.py --calibrate``, results in
``benchmarks/results/auto_tiling_cpu.md``), rounded up by about 5 %.

The budget: an explicit size (``4GB``, ``512MiB``, a byte count), a share of the memory available
(``25%``), ``off`` (never tile for memory), or by default ``DEFAULT_SHARE`` of the memory available now:
the least of /proc/meminfo's MemAvailable and the room left under the process's cgroup memory limits (v1
and v2; containers), else the physical memory. ``NRP_MEMORY_BUDGET`` sets the default for a deployment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nrp_deploy.errors import InputError
from nrp_deploy.models.spec import ModelSpec

#: Share of the available memory a call may use when no budget is given.
DEFAULT_SHARE = 0.5
#: Environment variable that sets the default budget (same forms as ``--memory-budget``).
BUDGET_ENV = "NRP_MEMORY_BUDGET"
#: float32 feature maps of the widest layer live at a backend's peak (measured; see the module doc).
LIVE_MAPS = {"onnxruntime": 4.5, "openvino": 2.4, "torch": 5.3}
#: For backends not measured (TensorRT, whose activations live on the GPU): the largest measured factor.
LIVE_MAPS_DEFAULT = max(LIVE_MAPS.values())
_BYTES_PER_VALUE = 4
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_UNLIMITED = 2**60  # cgroup v1 reports "no limit" as a number near 2**63


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes one backend call may use for activations, and where the figure came from (for the log)."""

    bytes: int
    source: str

    def describe(self) -> str:
        return f"{format_bytes(self.bytes)} memory budget ({self.source})"


@dataclass(frozen=True)
class Available:
    """Memory this process can still take, and which reading set it."""

    bytes: int
    source: str


def format_bytes(count: float) -> str:
    """``count`` bytes in decimal units: 9.2 GB, 512 MB."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


def parse_size(text: str) -> int:
    """Bytes in ``text``: a whole number of bytes, or a number and a unit (B, KB, MB, GB, TB decimal; KiB,
    MiB, GiB, TiB binary; any case)."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or (unit == "" and "." in match.group(1)):
        raise InputError(
            f"memory budget {text!r} is not a size: give a number with a unit (4GB, 512MB, 2GiB), a share "
            "of the available memory (25%), or off"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def _meminfo_available(meminfo: Path) -> Available | None:
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), flags=re.M)
    except OSError:
        return None
    return Available(int(match.group(1)) * 1024, "MemAvailable") if match else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _cgroup_dirs(root: Path, relative: str) -> list[Path]:
    """The process's cgroup folder and its ancestors up to ``root`` (a parent's limit binds too); inside a
    container the recorded path may not exist under its own mount, which is then the container's root."""
    parts = [p for p in relative.strip("/").split("/") if p]
    dirs = [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()] or [root]


def _cgroup_available(self_cgroup: Path, root: Path) -> Available | None:
    """Room left under the tightest memory limit of the process's cgroups (v2 and v1), if any is set."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    room: list[Available] = []
    for line in lines:
        _, controllers, relative = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "" and (root / "cgroup.controllers").exists():
            files, where = ("memory.max", "memory.current"), root
        elif "memory" in controllers.split(","):
            files, where = ("memory.limit_in_bytes", "memory.usage_in_bytes"), root / "memory"
        else:
            continue
        for folder in _cgroup_dirs(where, relative):
            limit, used = _read_int(folder / files[0]), _read_int(folder / files[1])
            if limit is not None and limit < _UNLIMITED:
                room.append(Available(max(0, limit - (used or 0)), f"cgroup limit {folder / files[0]}"))
    return min(room, key=lambda a: a.bytes, default=None)


def available_memory(
    meminfo: Path = Path("/proc/meminfo"),
    self_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> Available | None:
    """The least of MemAvailable and the room under the cgroup limits; the physical memory where neither
    can be read (not Linux); None where nothing can be."""
    readings = [r for r in (_meminfo_available(meminfo), _cgroup_available(self_cgroup, cgroup_root)) if r]
    if readings:
        return min(readings, key=lambda a: a.bytes)
    try:
        return Available(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory")
    except (AttributeError, ValueError, OSError):
        return None


def resolve_budget(
    value: int | str | None,
    environ: Mapping[str, str] = os.environ,
    available: Available | None = None,
) -> MemoryBudget | None:
    """The budget for ``value`` (see the module doc); None for ``off``, or when no memory can be read.

    ``available`` is read now when a share needs it and none is given.
    """
    if value is not None:
        return _budget(value, "memory_budget", available)
    if BUDGET_ENV not in environ:
        return _share(DEFAULT_SHARE, "default", available)
    try:
        return _budget(environ[BUDGET_ENV], BUDGET_ENV, available)
    except InputError as exc:
        raise InputError(f"{BUDGET_ENV}={environ[BUDGET_ENV]!r}: {exc}") from exc


def _budget(value: int | str, origin: str, available: Available | None) -> MemoryBudget | None:
    """One budget value (bytes, a size, a share or ``off``), ``origin`` naming where it was given."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError(
            f"memory budget must be a size such as '4GB', a share such as '25%' or 'off', not {value!r}"
        )
    if isinstance(value, int):
        if value < 1:
            raise InputError(f"memory budget must be a positive number of bytes, got {value}")
        return MemoryBudget(value, origin)
    text = value.strip()
    if text.lower() == "off":
        return None
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            share = math.nan
        if not 0 < share <= 1:
            raise InputError(f"memory budget share {value!r} must be a percentage in (0, 100]")
        return _share(share, origin, available)
    size = parse_size(text)
    if size < 1:
        raise InputError(f"memory budget {value!r} must be more than 0 bytes")
    return MemoryBudget(size, origin)


def _share(share: float, origin: str, available: Available | None) -> MemoryBudget | None:
    available = available or available_memory()
    if available is None:
        return None
    return MemoryBudget(
        int(share * available.bytes),
        f"{origin}: {share:.0%} of {format_bytes(available.bytes)} available, {available.source}",
    )


def live_maps(backend: str) -> float:
    """Feature maps of the widest layer a backend (by its name, ``onnxruntime-cpu``, ``torch-cuda``, or its
    family, ``onnxruntime``) holds at once at its peak (see ``LIVE_MAPS``)."""
    return LIVE_MAPS.get(backend.partition("-")[0], LIVE_MAPS_DEFAULT)


def activation_bytes(spec: ModelSpec, backend: str, height: int, width: int, images: int = 1) -> int:
    """Estimated peak activation memory of ``images`` images of ``height`` x ``width`` in one call."""
    per_pixel = spec.widest_channels * _BYTES_PER_VALUE * live_maps(backend)
    return math.ceil(per_pixel * height * width * images)


def largest_square(spec: ModelSpec, backend: str, budget: int, images: int) -> int:
    """Side of the largest square image of which ``images`` fit ``budget`` together."""
    per_pixel = spec.widest_channels * _BYTES_PER_VALUE * live_maps(backend) * images
    return math.isqrt(int(budget / per_pixel))


def tile_side(
    spec: ModelSpec, backend: str, budget: int, tiles_per_call: int, smallest: int, largest: int | None
) -> tuple[int, bool]:
    """Side of the largest tile (a multiple of 8 px, within [smallest, largest]) whose activations,
    ``tiles_per_call`` at a time, fit ``budget``; and whether it does fit (False: ``smallest`` is over)."""
    fits = largest_square(spec, backend, budget, tiles_per_call)
    side = max(fits // 8 * 8, smallest)
    side = min(side, largest) if largest else side
    return side, side <= fits
