"""Facts measured on this machine and kept in the artifact cache: BF16 verdicts and ``auto``'s choices.

Both hold only for the machine and software that measured them: a BF16 run's error depends on the CPU's
kernels (AVX512-BF16 or AMX) and on OpenVINO's version; which backend is fastest depends on the CPU, its
instruction sets and every inference library's version. So each record stores the ``key`` it was measured
under (``machine_identity()`` plus what was asked) next to its ``value``, and is trusted only when the key
matches exactly: a record made on another CPU, under other library versions, or a file that is unreadable,
truncated or hand-edited into another shape, is ignored (with a log line), measured again and rewritten
atomically. Records live in ``machine/`` below the artifact cache folder (``artifacts.cache.cache_dir``).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from nrp_deploy import __version__
from nrp_deploy.artifacts.cache import cache_dir
from nrp_deploy.cpu_features import host_isa
from nrp_deploy.fileutil import write_json_atomic

log = logging.getLogger(__name__)

FORMAT = 1
#: The inference libraries whose versions decide speed and arithmetic: (label, distributions that ship it).
LIBRARIES = (
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ("openvino", ("openvino",)),
    ("torch", ("torch",)),
    ("tensorrt", ("tensorrt", "tensorrt-cu13", "tensorrt-cu12")),
    ("numpy", ("numpy",)),
)


def library_versions() -> dict[str, str | None]:
    """The installed version of each inference library (None when absent), read from package metadata."""
    versions: dict[str, str | None] = {}
    for label, distributions in LIBRARIES:
        versions[label] = None
        for distribution in distributions:
            try:
                versions[label] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def machine_identity() -> dict[str, Any]:
    """What a measurement here depends on: CPU architecture, model and ISA flags, library versions."""
    isa = host_isa()
    return {
        "arch": isa.arch,
        "cpu": isa.model,
        "features": sorted(isa.flags),
        "versions": {**library_versions(), "nrp-deploy": __version__},
    }


def records_dir() -> Path:
    return cache_dir() / "machine"


def read_record(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The value stored at ``path`` when it was recorded under exactly ``key``; None (logged) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable machine record %s (%s); measuring again", path, exc)
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("value"), dict):
        log.warning("ignoring malformed machine record %s; measuring again", path)
        return None
    if data.get("key") != key:
        log.info("machine record %s was measured on another machine or software stack; measuring again", path)
        return None
    return data["value"]


def write_record(path: Path, key: dict[str, Any], value: dict[str, Any]) -> None:
    """Store ``value`` measured under ``key`` (temp file + rename: a reader never sees half a record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"format": FORMAT, "key": key, "value": value})
