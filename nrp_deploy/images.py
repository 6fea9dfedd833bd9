"""Image files in and out (torch-free): any common format in, RGB uint8 HWC arrays, lossless PNG out.

Decoding follows the published purifier's input convention: RGB at the image's own size, grey expanded
to three channels, alpha dropped, EXIF orientation applied (what a viewer shows is what gets purified).
16-bit images are reduced to 8 bits by rounding (v / 257), the exact inverse of the usual 8->16 bit scaling.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nrp_deploy.errors import ImageError
from nrp_deploy.fileutil import atomic_output

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to a contiguous RGB uint8 array of shape (H, W, 3)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb8(img)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a recognised image format (corrupt or not an image)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})") from exc


def _to_rgb8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) array as PNG, atomically (temp file + rename)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"{path}: expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    with atomic_output(path) as fh:
        Image.fromarray(image).save(fh, format="PNG")


@dataclass(frozen=True)
class ImageTask:
    """One input file and where its result goes, relative to the output directory."""

    source: Path
    relative: Path

    def output_path(self, output_dir: Path, suffix: str = ".png") -> Path:
        return output_dir / self.relative.with_suffix(suffix)


def collect_images(inputs: Iterable[str | os.PathLike[str]]) -> list[ImageTask]:
    """Expand files and directories (recursively) into image tasks, keeping each directory's layout.

    Files given by name are taken whatever their suffix (a bad one is reported when decoded); files
    found while walking a directory are taken only with a known image suffix.
    """
    tasks: list[ImageTask] = []
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    tasks.append(ImageTask(path, path.relative_to(root)))
        elif root.exists():
            tasks.append(ImageTask(root, Path(root.name)))
        else:
            raise ImageError(f"{root}: no such file or directory")
    return tasks
