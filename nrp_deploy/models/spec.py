"""Architecture specs: what a purifier is, independent of its weights.

Each architecture has one record (``Architecture``) that holds everything the package knows about it: its
default hyper-parameters, how to build it, how to recognise it in a state dict and read its
hyper-parameters off the keys and shapes, and what deployment asks before any weights are loaded: how far a
pixel's influence reaches (the receptive field, which sets the tile overlap) and how much arithmetic one
pixel costs (for roofline figures). A ``ModelSpec`` names an architecture and its hyper-parameters and
answers from the record. Torch-free: building imports torch (``architectures``) when asked, and detection
reads only the keys and the ``.shape`` of the values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nrp_deploy.errors import CheckpointError

#: A state dict as detection sees it: key -> anything with a ``.shape`` (a tensor, an array).
StateShapes = Mapping[str, Any]

_MAX_LISTED = 8
_KERNEL = 9  # 3x3 convolutions throughout


@dataclass(frozen=True)
class Architecture:
    """One purifier architecture, in one place.

    ``markers``: state-dict keys that only this architecture has (any one identifies it); ``families``:
    how its keys are named, for messages. ``read_config(state, nf, in_nc)`` reads the rest of the
    hyper-parameters off a state dict; ``convs`` / ``macs`` count the 3x3 convolutions on the longest path
    and the multiply-accumulates per output pixel of a config; ``build`` makes the torch module.
    """

    name: str
    defaults: Mapping[str, int]
    markers: tuple[str, ...]
    families: str
    read_config: Callable[[StateShapes, int, int], dict[str, int]]
    convs: Callable[[Mapping[str, int]], int]
    macs: Callable[[Mapping[str, int]], int]
    widest: Callable[[Mapping[str, int]], int]
    build: Callable[[Mapping[str, int]], Any]


def _build_nrp(config: Mapping[str, int]) -> Any:
    from nrp_deploy.models.architectures import NRP  # torch, only when a module is built

    return NRP(**config)


def _nrp_config(state: StateShapes, nf: int, in_nc: int) -> dict[str, int]:
    nb = count_blocks(state, "RRDB_trunk")
    gc_key = "RRDB_trunk.0.RDB1.conv1.weight"
    gc = conv_channels(state, gc_key)[0] if gc_key in state else 32
    out_nc = conv_channels(state, "trunk_conv.weight")[0] if "trunk_conv.weight" in state else 3
    return {"in_nc": in_nc, "out_nc": out_nc, "nf": nf, "nb": nb, "gc": gc}


def _nrp_macs(c: Mapping[str, int]) -> int:
    nf, gc = c["nf"], c["gc"]
    dense = sum((nf + i * gc) * gc for i in range(4)) + (nf + 4 * gc) * nf
    return _KERNEL * (c["in_nc"] * nf + c["nb"] * 3 * dense + nf * c["out_nc"])


def _build_resg(config: Mapping[str, int]) -> Any:
    from nrp_deploy.models.architectures import NRP_resG  # torch, only when a module is built

    return NRP_resG(**config)


def _resg_config(state: StateShapes, nf: int, in_nc: int) -> dict[str, int]:
    nb = count_blocks(state, "recon_trunk")
    out_nc = conv_channels(state, "conv_last.weight")[0] if "conv_last.weight" in state else 3
    return {"in_nc": in_nc, "out_nc": out_nc, "nf": nf, "nb": nb}


def _resg_macs(c: Mapping[str, int]) -> int:
    nf = c["nf"]
    return _KERNEL * (c["in_nc"] * nf + c["nb"] * 2 * nf * nf + nf * c["out_nc"])


NRP = Architecture(
    name="NRP",
    defaults={"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23, "gc": 32},
    markers=("RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight"),
    families="RRDB_trunk.*, trunk_conv.*",
    read_config=_nrp_config,
    convs=lambda c: 2 + c["nb"] * 3 * 5,  # conv_first, 3 dense blocks of 5 per RRDB, trunk_conv
    macs=_nrp_macs,
    widest=lambda c: c["nf"] + 4 * c["gc"],  # a dense block's input to its last convolution
    build=_build_nrp,
)
NRP_RESG = Architecture(
    name="NRP_resG",
    defaults={"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23},
    markers=("conv_last.weight", "recon_trunk.0.conv1.weight"),
    families="recon_trunk.*, conv_last.*",
    read_config=_resg_config,
    convs=lambda c: 2 + c["nb"] * 2,  # conv_first, 2 per residual block, conv_last
    macs=_resg_macs,
    widest=lambda c: c["nf"],
    build=_build_resg,
)
#: Every architecture by name, in the order detection tries them.
ARCHITECTURES: dict[str, Architecture] = {record.name: record for record in (NRP, NRP_RESG)}


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    config: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")
        defaults = ARCHITECTURES[self.architecture].defaults
        unknown = set(self.config) - set(defaults)
        if unknown:
            raise ValueError(f"{self.architecture} takes no option(s) {sorted(unknown)}")
        object.__setattr__(self, "config", {**defaults, **self.config})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(data["architecture"], dict(data.get("config", {})))

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "config": dict(self.config)}

    @property
    def record(self) -> Architecture:
        return ARCHITECTURES[self.architecture]

    def build(self):  # -> torch.nn.Module; torch is imported then, so the spec itself stays torch-free
        return self.record.build(self.config)

    @property
    def num_convs(self) -> int:
        """3x3 convolutions on the longest input-to-output path."""
        return self.record.convs(self.config)

    @property
    def receptive_field(self) -> int:
        """Side of the square of input pixels that can influence one output pixel (2 * convs + 1)."""
        return 2 * self.num_convs + 1

    @property
    def macs_per_pixel(self) -> int:
        """Multiply-accumulates per output pixel (all convolutions run at full resolution)."""
        return self.record.macs(self.config)

    @property
    def widest_channels(self) -> int:
        """Channels of the widest activation, per pixel: what peak activation memory scales with."""
        return self.record.widest(self.config)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.architecture}({opts})"


def detect_spec(state: StateShapes) -> ModelSpec:
    """Architecture and hyper-parameters implied by the keys and shapes of a state dict."""
    if "conv_first.weight" not in state:
        raise CheckpointError(
            "not an NRP checkpoint: missing key 'conv_first.weight'; "
            f"first keys found: {key_listing(sorted(state))}"
        )
    nf, in_nc = conv_channels(state, "conv_first.weight")
    for record in ARCHITECTURES.values():
        if any(key in state for key in record.markers):
            return _rgb_spec(record.name, record.read_config(state, nf, in_nc))
    known = " nor ".join(f"the {r.name} keys ({r.families})" for r in ARCHITECTURES.values())
    raise CheckpointError(
        f"not an NRP checkpoint: found 'conv_first.weight' but neither {known}; "
        f"keys found: {key_listing(sorted(state))}"
    )


def count_blocks(state: StateShapes, prefix: str) -> int:
    """How many blocks ``prefix.0.``, ``prefix.1.``, ... the state dict holds; they must be numbered 0..N-1."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointError(f"blocks of {prefix} are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def conv_channels(state: StateShapes, key: str) -> tuple[int, int]:
    """(output, input) channels of the 2-D convolution weight ``key``; a tensor of another rank is refused."""
    shape = tuple(state[key].shape)
    if len(shape) != 4:
        raise CheckpointError(
            f"{key} has shape {shape}; a convolution weight has 4 dimensions (out, in, kh, kw)"
        )
    return int(shape[0]), int(shape[1])


def _rgb_spec(architecture: str, config: dict[str, int]) -> ModelSpec:
    """The spec, once its image channels are checked: a purifier maps RGB images to RGB images."""
    for key, role in (("in_nc", "input"), ("out_nc", "output")):
        if config[key] != 3:
            raise CheckpointError(
                f"this {architecture} checkpoint has {config[key]} {role} channels; a purifier takes and "
                "returns 3 (RGB) channels"
            )
    return ModelSpec(architecture, config)


def key_listing(items: list[str]) -> str:
    """The first few of ``items`` for a message, with how many more there are."""
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
