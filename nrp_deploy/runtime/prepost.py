"""Pre- and post-processing: the one host path every backend shares.

uint8 HWC images -> float32 NCHW in [0, 1] -> model -> clamp to [0, 1], *255, round -> uint8 HWC. The
arithmetic is the eager baseline's, operation for operation in float32 (``x / 255``; ``clip``, ``* 255``,
``np.rint``, which rounds half to even like ``torch.round``), so a backend that computes the same float
output gives the same bytes. Inputs are checked here, once, and rejected with ``InputError`` naming what
was wrong; a model never sees an array it was not made for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrp_deploy.errors import ImageError, InputError

_SCALE = np.float32(255.0)


class InputKind(enum.Enum):
    """What the caller handed in, so the result can be handed back in the same form."""

    PIL = "PIL image"
    HWC_UINT8 = "uint8 HWC image"
    NHWC_UINT8 = "uint8 NHWC batch"
    NCHW_FLOAT = "float32 NCHW batch"


@dataclass(frozen=True)
class Prepared:
    """A validated batch: uint8 NHWC (RGB) for image inputs, float32 NCHW in [0, 1] for float inputs.

    Image batches stay uint8 here so that a GPU path can take them as they are (a quarter of the bytes);
    the host path converts them with ``uint8_to_float``.
    """

    batch: np.ndarray
    kind: InputKind

    @property
    def is_uint8(self) -> bool:
        return self.kind is not InputKind.NCHW_FLOAT

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        if self.is_uint8:
            return self.batch.shape[1], self.batch.shape[2]
        return self.batch.shape[2], self.batch.shape[3]


def uint8_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> contiguous float32 NCHW in [0, 1] (``x / 255`` in float32, as the baseline)."""
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    x /= _SCALE
    return x


def float_to_uint8(y: np.ndarray) -> np.ndarray:
    """float NCHW model output -> contiguous uint8 NHWC: clamp to [0, 1], *255, round half to even."""
    out = np.clip(y.astype(np.float32, copy=False), 0.0, 1.0)
    out *= _SCALE
    np.rint(out, out=out)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1)).astype(np.uint8)


def _is_pil(obj: Any) -> bool:
    # Checked by module name so that Pillow is imported only by callers who pass PIL images.
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert") and hasattr(obj, "mode")


def prepare(images: Any, max_pixels: int | None = None) -> Prepared:
    """Validate ``images`` and convert them to the model's input; see the module docstring for the forms.

    ``max_pixels`` refuses images larger than that (height x width) from their shape alone, before any
    pixel is copied, converted or, for a PIL image opened lazily, decoded.
    """
    if _is_pil(images):
        return Prepared(_pil_batch(images, max_pixels), InputKind.PIL)
    if not isinstance(images, np.ndarray):
        raise InputError(
            f"expected a numpy array or a PIL image, got {type(images).__name__}; "
            "pass uint8 HWC / NHWC images or a float32 NCHW batch in [0, 1]"
        )
    if images.dtype == np.uint8:
        return _prepare_uint8(images, max_pixels)
    if images.dtype == np.float32:
        return Prepared(_check_float(images, max_pixels), InputKind.NCHW_FLOAT)
    raise InputError(
        f"unsupported dtype {images.dtype}: pass uint8 images (HWC or NHWC, RGB) or a float32 NCHW batch "
        "in [0, 1] (convert with .astype(np.float32))"
    )


def check_size(height: int, width: int, max_pixels: int | None) -> None:
    """Refuse an image of ``height`` x ``width`` pixels when that exceeds ``max_pixels``."""
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(
            f"image of {height}x{width} = {height * width} pixels exceeds the limit of {max_pixels} "
            "(max_pixels); downscale it, or raise max_pixels (and use a tile size to bound memory)"
        )


def _pil_batch(image: Any, max_pixels: int | None) -> np.ndarray:
    """A PIL image (decoded now if it was opened lazily) as a uint8 (1, H, W, 3) batch, scaled like a file
    read by ``nrp_deploy.images`` (16-bit and float images too)."""
    from nrp_deploy.images import pil_to_rgb8

    width, height = image.size
    if width < 1 or height < 1:
        raise InputError(f"empty input: PIL image of size {width}x{height} holds no pixel")
    check_size(height, width, max_pixels)
    try:
        image.load()
        return pil_to_rgb8(image)[None]
    except ImageError as exc:
        raise InputError(f"PIL image of mode {image.mode}: {exc}") from exc
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError and more on bad or truncated data
        raise InputError(
            f"PIL image of mode {image.mode} and size {width}x{height} cannot be decoded or converted to RGB "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _prepare_uint8(images: np.ndarray, max_pixels: int | None) -> Prepared:
    if images.ndim == 3:
        kind, batch = InputKind.HWC_UINT8, images[None]
    elif images.ndim == 4:
        kind, batch = InputKind.NHWC_UINT8, images
    else:
        raise InputError(
            f"uint8 input must be one HWC image or an NHWC batch, got {images.ndim}-D shape {images.shape}"
        )
    channels = batch.shape[3]
    if channels != 3:
        hint = " (drop the alpha channel: image[..., :3])" if channels == 4 else ""
        hint = " (expand grey to RGB: np.repeat(image, 3, axis=-1))" if channels == 1 else hint
        raise InputError(f"uint8 images must be RGB with 3 channels last, got shape {images.shape}{hint}")
    _check_not_empty(batch)
    check_size(batch.shape[1], batch.shape[2], max_pixels)
    return Prepared(np.ascontiguousarray(batch), kind)


def _check_float(x: np.ndarray, max_pixels: int | None) -> np.ndarray:
    if x.ndim != 4:
        raise InputError(f"float32 input must be a 4-D NCHW batch, got {x.ndim}-D shape {x.shape}")
    if x.shape[1] != 3:
        raise InputError(
            f"float32 input must be NCHW with 3 (RGB) channels, got {x.shape[1]} channels in shape {x.shape}"
        )
    _check_not_empty(x)
    check_size(x.shape[2], x.shape[3], max_pixels)
    lo, hi = float(x.min()), float(x.max())  # NaN propagates to both, so no full-size mask is needed
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("float32 input contains NaN or infinite values")
    if lo < 0.0:
        raise InputError(f"float32 input must lie in [0, 1], got values down to {lo:.9g}")
    if hi > 1.0:
        raise InputError(f"float32 input must lie in [0, 1], got values up to {hi:.9g}")
    return np.ascontiguousarray(x)


def _check_not_empty(batch: np.ndarray) -> None:
    if batch.size == 0:
        raise InputError(f"empty input: shape {batch.shape} holds no image or no pixel")


def deliver(out: np.ndarray, kind: InputKind) -> Any:
    """A purified batch (uint8 NHWC, or float32 NCHW for float input) in the form the input came in."""
    if kind in (InputKind.NCHW_FLOAT, InputKind.NHWC_UINT8):
        return out
    if kind is InputKind.HWC_UINT8:
        return out[0]
    from PIL import Image

    return Image.fromarray(out[0])
