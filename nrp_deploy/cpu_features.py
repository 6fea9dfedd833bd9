"""The CPU's instruction-set features that decide which integer kernels ONNX Runtime runs (torch-free).

Why it matters: ONNX Runtime's CPU INT8 convolutions multiply uint8 activations by int8 weights (U8S8).
On x86-64 without VNNI they use ``vpmaddubsw``, which adds two uint8 x int8 products into a *saturating*
16-bit lane before widening: with full-range weights a pair can reach 2 x 255 x 127 = 64,770, far above
32,767, and the sum is silently clipped. VNNI's ``vpdpbusd`` accumulates in 32 bits and never clips. With
weights kept to about 7 bits ([-64, 64], ONNX Runtime's ``reduce_range``) a pair stays within 2 x 255 x 64 =
32,640, so no CPU can saturate. An INT8 artifact therefore has a *target*:

- ``vnni``: full 8-bit weights (best fidelity); exact only on CPUs with AVX-512 VNNI, AVX-VNNI or AMX.
- ``any``: 7-bit weights; exact on every x86-64 CPU (and on Arm, whose dot-product kernels never clip).

``host_isa()`` reads the features once per process (``/proc/cpuinfo`` on Linux); a platform whose features
cannot be read is treated as one that may saturate, so the choice made for it is always the safe one.
"""

from __future__ import annotations

import functools
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrp_deploy.errors import InputError

#: Features recorded with benchmark results and INT8 artifacts: the ones that pick CPU kernels.
ISA_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
#: Any of these gives the 32-bit-accumulating int8 dot products (VNNI): 4 multiply-adds per 32-bit lane.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
INT8_TARGETS = ("auto", "vnni", "any")


@dataclass(frozen=True)
class CpuIsa:
    """What a CPU offers: its architecture, model name and the relevant feature flags."""

    arch: str
    model: str
    flags: frozenset[str]
    known: bool = True

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in _X86

    @property
    def vnni(self) -> bool:
        return bool(self.flags & VNNI_FLAGS)

    @property
    def u8s8_saturates(self) -> bool:
        """True where full-range INT8 weights can clip in ONNX Runtime's U8S8 kernels (see module doc)."""
        if not self.known:
            return True
        return self.is_x86 and not self.vnni

    def headline(self) -> str:
        """One line naming the feature families that matter: AVX2, AVX-512, VNNI, BF16, AMX."""
        if not self.known:
            return f"{self.arch}: features unknown"
        families = {
            "AVX2": "avx2" in self.flags,
            "AVX-512": "avx512f" in self.flags,
            "VNNI": self.vnni,
            "BF16": bool(self.flags & {"avx512_bf16", "amx_bf16"}),
            "AMX": bool(self.flags & {"amx_tile", "amx_int8", "amx_bf16"}),
        }
        return ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in families.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "model": self.model,
            "features": sorted(self.flags),
            "vnni": self.vnni,
            "known": self.known,
        }


def parse_cpuinfo(text: str, arch: str) -> CpuIsa:
    """The ISA described by the text of ``/proc/cpuinfo`` (the first processor's flags and model name)."""
    flags_line = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, flags=re.M)
    model_line = re.search(r"^(?:model name|Model name|CPU part)\s*:\s*(.*)$", text, flags=re.M)
    if flags_line is None:
        return CpuIsa(arch=arch, model="unknown", flags=frozenset(), known=False)
    present = frozenset(flags_line.group(1).split()) & frozenset(ISA_FEATURES)
    return CpuIsa(arch=arch, model=model_line.group(1).strip() if model_line else "unknown", flags=present)


@functools.cache
def host_isa() -> CpuIsa:
    """This machine's CPU features (read once per process)."""
    arch = platform.machine() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuIsa(arch=arch, model=platform.processor() or "unknown", flags=frozenset(), known=False)
    return parse_cpuinfo(text, arch)


def resolve_int8_target(target: str, isa: CpuIsa | None = None) -> str:
    """``vnni`` or ``any`` for a requested target; ``auto`` picks what is exact on ``isa`` (the host)."""
    if target not in INT8_TARGETS:
        raise InputError(f"INT8 target CPU must be one of {', '.join(INT8_TARGETS)}, not {target!r}")
    if target != "auto":
        return target
    return "any" if (isa or host_isa()).u8s8_saturates else "vnni"


def int8_target_mismatch(target: str | None, isa: CpuIsa | None = None) -> str | None:
    """Why an INT8 artifact made for ``target`` would lose fidelity on ``isa`` (the host), or None if fine."""
    isa = isa or host_isa()
    if target != "vnni" or not isa.u8s8_saturates:
        return None
    return (
        f"it was quantised with full 8-bit weights for CPUs with VNNI, and this CPU ({isa.model}: "
        f"{isa.headline()}) lacks VNNI, so ONNX Runtime's INT8 kernels can saturate and the output degrade"
    )
