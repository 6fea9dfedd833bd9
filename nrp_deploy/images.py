"""Image files in and out (torch-free): common formats in, RGB uint8 HWC arrays, lossless PNG out.

Decoding follows the published purifier's input convention: RGB at the image's own size, grey expanded
to three channels, alpha dropped, EXIF orientation applied (what a viewer shows is what gets purified).
16-bit and 32-bit integer images are scaled to 8 bits by rounding (``v / 257`` for 16 bits, the exact
inverse of the usual 8->16 bit scaling); float images in [0, 1] are scaled by 255.

Input files are hostile until proven otherwise. Only the formats photos come in are decoded
(``FORMATS``): Pillow knows dozens more (DDS, BLP, SPIDER, PSD, ...) whose decoders see little use and
fail in unusual ways, so a file whose bytes say it is one of those is refused whatever its suffix. The
declared size is checked before any pixel is decoded, a path that is not a regular file (FIFO, device,
directory) is refused without blocking on it, and any failure while decoding becomes an ``ImageError``
that names the file, so one bad file fails alone.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nrp_deploy.errors import ImageError
from nrp_deploy.fileutil import atomic_output

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Pillow format names that are decoded (JPEG includes MPO, which many phone cameras write; PPM: PBM/PGM/PPM).
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to a contiguous RGB uint8 array of shape (H, W, 3).

    ``max_pixels`` refuses images whose declared height x width exceeds it, before decoding them (Pillow's
    own decompression-bomb limit applies in any case).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of blocking
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "rb") as fh:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind != "regular file":
            raise ImageError(f"{path}: not a regular file but a {kind}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's notes on odd metadata: the image is judged below
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(fh, formats=FORMATS) as img:
                    check_declared_size(img, max_pixels, str(path))
                    img.load()
                    return pil_to_rgb8(ImageOps.exif_transpose(img))
        except ImageError:
            raise
        except UnidentifiedImageError as exc:
            raise ImageError(
                f"{path}: not an image in a supported format ({', '.join(FORMATS)}); corrupt or another format"
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{path}: image too large to decode safely ({exc})") from exc
        except MemoryError as exc:
            raise ImageError(f"{path}: out of memory while decoding") from exc
        except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError and more on bad data
            raise ImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def file_kind(mode: int) -> str:
    """What a ``stat`` mode says a path is, in words (``regular file``, ``FIFO``, ``directory``, ...)."""
    for test, word in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return word
    return "special file"


def check_declared_size(img: Image.Image, max_pixels: int | None, name: str) -> None:
    """Refuse an opened (not yet decoded) image whose declared size is empty or exceeds ``max_pixels``."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image declares an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: image of {height}x{width} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(max_pixels); refused before decoding"
        )


_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def pil_to_rgb8(img: Image.Image) -> np.ndarray:
    """A decoded PIL image as a contiguous RGB uint8 (H, W, 3) array, by the module's scaling rules."""
    mode = img.mode
    if mode in _INTEGER_MODES:
        values = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return _grey_to_rgb(values * (255.0 / peak))
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageError("float image holds NaN or infinite values")
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return _grey_to_rgb(values * scale)
    if mode in ("P", "PA", "La", "RGBa"):
        img = img.convert("LA" if mode == "La" else "RGBA")  # premultiplied and palette modes: via alpha
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _grey_to_rgb(values: np.ndarray) -> np.ndarray:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def write_png(path: str | os.PathLike[str], image: np.ndarray, overwrite: bool = True) -> None:
    """Write an RGB uint8 (H, W, 3) array as PNG, atomically (temp file + rename).

    ``overwrite=False`` raises ``FileExistsError`` if ``path`` exists at the moment the file is moved into
    place, and leaves that file as it is.
    """
    png = encode_png(image, name=str(path))
    with atomic_output(path, overwrite=overwrite) as fh:
        fh.write(png)


def encode_png(image: np.ndarray, name: str = "image") -> bytes:
    """An RGB uint8 (H, W, 3) array as the bytes of a PNG file, the same bytes wherever it is encoded: a
    worker can encode and another process write (``name`` is the image's name in the error)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(f"{name}: expected a uint8 (H, W, 3) array, got {got}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class ImageTask:
    """One input file and where its result goes, relative to the output directory."""

    source: Path
    relative: Path

    def output_path(self, output_dir: Path, suffix: str = ".png") -> Path:
        return output_dir / self.relative.with_suffix(suffix)


@dataclass
class Collected:
    """The image tasks found under some inputs, and the paths passed over with the reason why."""

    tasks: list[ImageTask] = field(default_factory=list)
    passed_over: list[tuple[Path, str]] = field(default_factory=list)


def collect_images(inputs: Iterable[str | os.PathLike[str]]) -> list[ImageTask]:
    """Expand files and directories (recursively) into image tasks; see ``scan_images``. Passed-over paths
    are logged as warnings, each named with its reason (callers that report them otherwise, as the batch
    job does, use ``scan_images``)."""
    found = scan_images(inputs)
    for path, reason in found.passed_over:
        log.warning("passed over %s: %s", path, reason)
    return found.tasks


def scan_images(inputs: Iterable[str | os.PathLike[str]]) -> Collected:
    """Expand files and directories (recursively) into image tasks, keeping each directory's layout.

    Files given by name are taken whatever they are (a bad one is reported when read). While walking a
    directory, regular files with a known image suffix are taken; other entries with an image suffix
    (FIFOs, devices, sockets, dangling links, directories) and links that lead back into a directory being
    walked are passed over with the reason, so nothing is skipped silently and nothing blocks. Symbolic
    links to files and directories are followed.
    """
    found = Collected()
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            _walk(root, found)
        elif root.exists() or root.is_symlink():
            found.tasks.append(ImageTask(root, Path(root.name)))
        else:
            raise ImageError(f"{root}: no such file or directory")
    return found


def _walk(root: Path, found: Collected) -> None:
    """Depth first in name order (the order of sorted paths), with an explicit stack: no recursion limit."""
    stack: list[tuple[Iterator[os.DirEntry[str]], set[tuple[int, int]]]] = []

    def enter(directory: Path, ancestors: set[tuple[int, int]]) -> None:
        try:
            info = directory.stat()
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            found.passed_over.append((directory, f"cannot list directory ({exc.strerror or exc})"))
            return
        stack.append((iter(entries), ancestors | {(info.st_dev, info.st_ino)}))

    enter(root, set())
    while stack:
        entries, here = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path = Path(entry.path)
        if entry.name.startswith(".") and not entry.is_dir():  # hidden files (and our temporaries)
            continue
        is_image_name = path.suffix.lower() in IMAGE_SUFFIXES
        try:
            st = entry.stat()  # follows links
        except OSError as exc:
            if is_image_name or entry.is_symlink():
                dangling = entry.is_symlink() and exc.errno == errno.ENOENT
                found.passed_over.append(
                    (path, "dangling symbolic link" if dangling else exc.strerror or str(exc))
                )
            continue
        kind = file_kind(st.st_mode)
        if kind == "directory":
            if (st.st_dev, st.st_ino) in here:
                found.passed_over.append((path, "symbolic link loop (leads back to a folder being walked)"))
            else:
                enter(path, here)
        elif not is_image_name:
            continue
        elif kind == "regular file":
            found.tasks.append(ImageTask(path, path.relative_to(root)))
        else:
            found.passed_over.append((path, f"not a regular file but a {kind}"))
