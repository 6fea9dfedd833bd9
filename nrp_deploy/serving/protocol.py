"""What a purification request to the server looks like, shared by the server's model and the clients.

One input, ``images``: uint8, ``[N, H, W, 3]`` (N images of one size; Triton's dynamic batcher joins
requests of equal size). One output, ``purified``: uint8, the same shape. Optional request parameters:
``dynamic`` (bool: the dynamic defence on or off; default: the server's setting), ``seed`` (the dynamic
defence's seed, an integer 0 <= seed < 2**64, sent as a decimal string above 2**63 - 1; without it a fresh
seed is drawn per request) and ``start_index`` (the noise index of the request's first image, default 0; no
effect with the defence off). A request purifies exactly as
``Purifier(images, dynamic=DynamicDefense(seed=seed), start_index=start_index)`` does in process.

Only numpy and the runtime's error types: the server's Python-backend model and the clients import this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nrp_deploy.errors import InputError

MODEL_NAME = "nrp_purifier"
INPUT = "images"
OUTPUT = "purified"
PARAMETERS = ("dynamic", "seed", "start_index")
#: Parameters Triton itself may attach to a request (sequence batching, priorities, binary output flags).
TRITON_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output"}
)


@dataclass(frozen=True)
class RequestOptions:
    """A request's dynamic-defence choice: off (``dynamic`` False) or on with ``seed`` (None: fresh), its
    first image at noise index ``start_index``."""

    dynamic: bool
    seed: int | None = None
    start_index: int = 0


def parse_parameters(parameters: Mapping[str, object], dynamic_default: bool) -> RequestOptions:
    """Check a request's parameters; ``InputError`` names the parameter and what to send instead."""
    unknown = sorted(set(parameters) - set(PARAMETERS) - TRITON_PARAMETERS)
    if unknown:
        raise InputError(
            f"unknown request parameter(s) {', '.join(map(repr, unknown))}; "
            f"this model takes {', '.join(PARAMETERS)}"
        )
    dynamic = parameters.get("dynamic", dynamic_default)
    if isinstance(dynamic, str) and dynamic.lower() in ("true", "false"):
        dynamic = dynamic.lower() == "true"
    if not isinstance(dynamic, bool):
        raise InputError(f"parameter 'dynamic' must be true or false, got {dynamic!r}")
    start_index = _integer("start_index", parameters.get("start_index", 0), 32)
    seed = parameters.get("seed")
    if seed is None:
        return RequestOptions(dynamic, None, start_index)
    if not dynamic:
        raise InputError(
            "parameter 'seed' sets the dynamic defence's noise: send dynamic=true or drop 'seed'"
        )
    return RequestOptions(True, _integer("seed", seed, 64), start_index)


def _integer(name: str, value: object, bits: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise InputError(f"parameter {name!r} must be an integer 0 <= {name} < 2**{bits}, got {value!r}")
    return value


def encode_parameters(dynamic: bool | None, seed: int | None, start_index: int = 0) -> dict[str, object]:
    """Request parameters for a client call; ``dynamic`` None leaves the server's default."""
    if seed is not None and dynamic is False:
        raise InputError("seed sets the dynamic defence's noise: drop it or leave dynamic on")
    params: dict[str, object] = {}
    if dynamic is not None:
        params["dynamic"] = dynamic
    if seed is not None:
        _integer("seed", seed, 64)
        params["seed"] = seed if seed < 1 << 63 else str(seed)  # Triton's int parameters are int64
    if start_index:
        params["start_index"] = _integer("start_index", start_index, 32)
    return params


def check_images(images: np.ndarray, max_pixels: int | None = None) -> None:
    """Refuse what Triton's own checks (dtype, rank, channels, batch size) let through."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"'{INPUT}' must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    count, height, width, _ = images.shape
    if count == 0 or height == 0 or width == 0:
        raise InputError(
            f"'{INPUT}' is empty ({list(images.shape)}): send at least one image of at least 1x1"
        )
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(
            f"images of {height}x{width} = {height * width} pixels exceed the server's limit of {max_pixels}; "
            "downscale or tile them before sending"
        )
