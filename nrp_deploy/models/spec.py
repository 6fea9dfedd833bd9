"""Architecture specs: what a purifier is, independent of its weights.

A ``ModelSpec`` names an architecture and its hyper-parameters. It builds the torch module, and it answers
the questions deployment asks before any weights are loaded: how far a pixel's influence reaches (the
receptive field, which sets the tile overlap) and how much arithmetic one pixel costs (for roofline figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("NRP", "NRP_resG")

_DEFAULTS: dict[str, dict[str, int]] = {
    "NRP": {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23, "gc": 32},
    "NRP_resG": {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23},
}


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    config: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in _DEFAULTS:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")
        unknown = set(self.config) - set(_DEFAULTS[self.architecture])
        if unknown:
            raise ValueError(f"{self.architecture} takes no option(s) {sorted(unknown)}")
        merged = {**_DEFAULTS[self.architecture], **self.config}
        object.__setattr__(self, "config", merged)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(data["architecture"], dict(data.get("config", {})))

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "config": dict(self.config)}

    def build(self):  # -> torch.nn.Module; torch is imported here so the spec itself stays torch-free
        from nrp_deploy.models.architectures import NRP, NRP_resG

        cls = {"NRP": NRP, "NRP_resG": NRP_resG}[self.architecture]
        return cls(**self.config)

    @property
    def num_convs(self) -> int:
        """3x3 convolutions on the longest input-to-output path."""
        nb = self.config["nb"]
        if self.architecture == "NRP":
            return 2 + nb * 3 * 5
        return 2 + nb * 2

    @property
    def receptive_field(self) -> int:
        """Side of the square of input pixels that can influence one output pixel (2 * convs + 1)."""
        return 2 * self.num_convs + 1

    @property
    def macs_per_pixel(self) -> int:
        """Multiply-accumulates per output pixel (all convolutions run at full resolution)."""
        c = self.config
        k = 9
        if self.architecture == "NRP":
            nf, gc = c["nf"], c["gc"]
            dense = sum((nf + i * gc) * gc for i in range(4)) + (nf + 4 * gc) * nf
            return k * (c["in_nc"] * nf + c["nb"] * 3 * dense + nf * c["out_nc"])
        nf = c["nf"]
        return k * (c["in_nc"] * nf + c["nb"] * 2 * nf * nf + nf * c["out_nc"])

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.architecture}({opts})"
