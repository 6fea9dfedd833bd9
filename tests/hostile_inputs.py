"""Test helpers for hostile inputs: tiny ONNX purifiers built without torch, and a generated corpus of odd
and malformed image files with the outcome each one must have.

The corpus is deterministic (one seeded generator, fixed lists) and small (images of at most 48 px, a few
hundred files, well under a second to write), so the invariant tests run in CI on every change.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

# -- tiny ONNX purifiers ---------------------------------------------------------------------------------


def tiny_onnx(
    path: Path,
    *,
    in_channels: int = 3,
    out_channels: int = 3,
    stride: int = 1,
    input_shape: tuple[int | str, ...] = ("N", 3, "H", "W"),
    weight_value: float | None = None,
    reshape_to: tuple[int, ...] | None = None,
) -> Path:
    """A one-convolution "purifier" (3x3, padding 1): near identity with a little blur, so outputs differ
    from inputs but stay images. ``weight_value`` fills the weights (NaN, inf); ``reshape_to`` reshapes the
    input first (a model that fails at run time on other shapes)."""
    rng = np.random.default_rng(7)
    weight = rng.normal(0.0, 0.02, (out_channels, in_channels, 3, 3)).astype(np.float32)
    for c in range(min(in_channels, out_channels)):
        weight[c, c, 1, 1] += 0.9
    if weight_value is not None:
        weight[...] = weight_value
    bias = np.full(out_channels, 0.05, dtype=np.float32)
    nodes, inits = [], [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    conv_in = "input"
    if reshape_to is not None:
        inits.append(numpy_helper.from_array(np.array(reshape_to, dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["input", "shape"], ["reshaped"]))
        conv_in = "reshaped"
    nodes.append(
        helper.make_node("Conv", [conv_in, "w", "b"], ["output"], pads=[1, 1, 1, 1], strides=[stride, stride])
    )
    shape = list(input_shape)
    if len(shape) == 4:
        shape[1] = in_channels
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, path)
    return path


# -- the corpus ------------------------------------------------------------------------------------------

OK, FAIL, EITHER = "ok", "fail", "either"


@dataclass
class Expected:
    """What must happen to one input: ``ok`` (written at ``size``), ``fail`` (named as failed), or
    ``either`` (one or the other, never both: truncated files that may still hold a whole image)."""

    outcome: str
    size: tuple[int, int] | None = None  # (height, width) of the output


@dataclass
class Corpus:
    root: Path
    expected: dict[Path, Expected] = field(default_factory=dict)  # relative input path -> outcome
    existing: dict[Path, bytes] = field(default_factory=dict)  # output path -> bytes placed there before
    live_temporaries: list[Path] = field(default_factory=list)  # in the output folder, must stay
    stale_temporaries: list[Path] = field(default_factory=list)  # in the output folder, must go

    def add(self, relative: str, data: bytes, outcome: str, size: tuple[int, int] | None = None) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.expected[Path(relative)] = Expected(outcome, size)
        return path

    def count(self, outcome: str) -> int:
        return sum(e.outcome == outcome for e in self.expected.values())


SIZES = ((1, 1), (1, 17), (23, 1), (16, 16), (31, 45), (48, 20))
# (format, suffix, modes) of valid images; every mode decodes to RGB at the image's size.
VALID = (
    ("PNG", ".png", ("RGB", "L", "LA", "P", "RGBA", "1", "I;16")),
    ("JPEG", ".jpg", ("RGB", "L", "CMYK")),
    ("BMP", ".bmp", ("RGB", "L", "P", "1")),
    ("TIFF", ".tif", ("RGB", "L", "RGBA", "I;16", "F", "CMYK", "I")),
    ("WEBP", ".webp", ("RGB", "RGBA")),
)
# Formats Pillow can write but the runtime does not decode: each is refused whatever its suffix.
FOREIGN = ("DDS", "BLP", "SPIDER", "ICO", "PCX", "SGI", "TGA", "MSP", "XBM", "PALM", "QOI", "ICNS")


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def random_image(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> Image.Image:
    height, width = size
    if mode in ("I;16", "I"):
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)).convert(mode)
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32), mode="F")
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return rgb.convert(mode) if mode not in ("1", "P") else rgb.convert("L").convert(mode)


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (8-bit grey), followed by ``idat`` as image data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def png_bomb(side: int) -> bytes:
    """A real ``side`` x ``side`` grey PNG of zeros: a few hundred KB that decode to ``side``**2 bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_declaring(side, side, data)


def build_corpus(root: Path, out: Path) -> Corpus:
    """Write the corpus under ``root`` (and prior outputs, temporaries under ``out``); see the module doc."""
    rng = np.random.default_rng(2024)
    root = root.absolute()
    corpus = Corpus(root)

    # Valid images: every format x mode x size, in nested folders.
    for fmt, suffix, modes in VALID:
        for mode in modes:
            for height, width in SIZES:
                image = random_image(rng, mode, (height, width))
                name = f"valid/{fmt.lower()}/{mode.replace(';', '_')}_{height}x{width}{suffix}"
                corpus.add(name, encode(image, fmt), OK, (height, width))
                if (height, width) == (16, 16):  # truncated copies: cut inside the header, the data, the end
                    data = encode(image, fmt)
                    for cut in (8, len(data) // 2, len(data) - 1):
                        corpus.add(
                            f"truncated/{fmt.lower()}_{mode.replace(';', '_')}_{cut}{suffix}",
                            data[:cut],
                            EITHER,
                        )

    # Content that contradicts the suffix still decodes (formats are sniffed from the bytes).
    for k in range(10):
        size = (8 + k, 12)
        jpeg = encode(random_image(rng, "RGB", size), "JPEG" if k % 2 else "PNG")
        corpus.add(f"wrong_suffix/w{k}{'.png' if k % 2 else '.jpg'}", jpeg, OK, size)

    # EXIF orientation 6 (rotate 90 degrees): output is the transposed size.
    for k in range(4):
        image = random_image(rng, "RGB", (10 + k, 20))
        exif = Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", exif=exif.tobytes())
        corpus.add(f"exif/rot{k}.jpg", buffer.getvalue(), OK, (20, 10 + k))

    # Formats outside the supported set, whole and damaged, under image suffixes.
    for fmt in FOREIGN:
        mode = {"SPIDER": "F", "XBM": "1", "PALM": "P", "BLP": "RGB"}.get(fmt, "RGB")
        try:
            data = encode(random_image(rng, mode, (16, 16)), fmt)
        except (OSError, ValueError, KeyError):
            continue
        corpus.add(f"foreign/{fmt.lower()}.png", data, FAIL)
        corpus.add(f"foreign/{fmt.lower()}_cut.jpg", data[: max(4, len(data) // 3)], FAIL)
        corpus.add(f"foreign/{fmt.lower()}_flip.tif", _flip_bytes(rng, data), FAIL)
    dds_header = b"DDS " + struct.pack("<7I", 124, 0x1007, 16, 16, 0, 0, 0) + bytes(44)
    dds_pixel_format = struct.pack("<2I", 32, 0x4) + b"ZZZZ" + bytes(20)
    corpus.add("foreign/odd_fourcc.png", dds_header + dds_pixel_format + bytes(20 + 1024), FAIL)

    # Garbage: empty, random bytes, text, a PNG signature with nothing behind it.
    for k in range(12):
        corpus.add(f"garbage/empty{k}{('.png', '.jpg', '.bmp', '.tiff', '.webp', '.jpeg')[k % 6]}", b"", FAIL)
    for k in range(30):
        size = int(rng.integers(1, 4000))
        corpus.add(f"garbage/random{k}{('.png', '.jpg', '.tif')[k % 3]}", rng.bytes(size), FAIL)
    for k in range(6):
        corpus.add(f"garbage/text{k}.png", b"this is not an image\n" * (k + 1), FAIL)
        corpus.add(f"garbage/sig{k}.png", b"\x89PNG\r\n\x1a\n" + rng.bytes(k * 7), FAIL)

    # Oversized declarations: refused from the header, never decoded.
    for k, (w, h) in enumerate(
        ((8200, 8200), (8193, 8193), (100_000, 100_000), (65_535, 2), (2, 70_000_000))
    ):
        corpus.add(f"huge/declared{k}.png", png_declaring(w, h, zlib.compress(b"\x00" * 64)), FAIL)
    for k in range(2):
        corpus.add(f"huge/bomb{k}.png", png_bomb(8200), FAIL)
    corpus.add("huge/zero_width.png", png_declaring(0, 16), FAIL)

    # Names: unicode, spaces, a leading dash, and long names up to the 255-byte limit.
    for k, stem in enumerate(("ünïcödé", "with space", "-dash", "日本語の名前", "tab\tname", "quote'\"")):
        corpus.add(f"names/{stem}{k}.png", encode(random_image(rng, "RGB", (9, 9)), "PNG"), OK, (9, 9))
    for length in (200, 241, 242, 250, 255):
        stem = "n" * (length - 4)
        corpus.add(f"names/{stem}.png", encode(random_image(rng, "RGB", (7, 5)), "PNG"), OK, (7, 5))
    corpus.add(f"names/{'é' * 125}.png", encode(random_image(rng, "RGB", (5, 7)), "PNG"), OK, (5, 7))

    # Collisions: both inputs of one output name fail, whatever the case.
    for a, b in (("a.jpg", "a.png"), ("Case.PNG", "Case.png"), ("Mixed.png", "mixed.jpg")):
        for name in (a, b):
            fmt = "JPEG" if name.lower().endswith(".jpg") else "PNG"
            corpus.add(f"collide/{name}", encode(random_image(rng, "RGB", (6, 6)), fmt), FAIL)

    # Special files under image names: a FIFO, links that lead nowhere or in circles, a device, a socket.
    special = root / "special"
    special.mkdir(parents=True, exist_ok=True)
    os.mkfifo(special / "fifo.png")
    (special / "dangling.png").symlink_to(special / "missing-target.png")
    (special / "self.png").symlink_to(special / "self.png")
    (special / "null.png").symlink_to("/dev/null")
    (special / "loop").symlink_to(special)
    target = corpus.add("special/real.png", encode(random_image(rng, "RGB", (4, 4)), "PNG"), OK, (4, 4))
    (special / "link.png").symlink_to(target)
    for name in ("fifo.png", "dangling.png", "self.png", "null.png", "loop"):
        corpus.expected[Path("special") / name] = Expected(FAIL)
    corpus.expected[Path("special/link.png")] = Expected(OK, (4, 4))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(special / "sock.png"))
    sock.close()
    corpus.expected[Path("special/sock.png")] = Expected(FAIL)
    (root / "folder.png").mkdir()  # a folder with an image suffix is walked, not read
    corpus.add("folder.png/inner.png", encode(random_image(rng, "RGB", (3, 5)), "PNG"), OK, (3, 5))

    # Outputs that exist before the run must survive it; temporaries of dead runs must not.
    for relative in (Path("valid/png/RGB_16x16.png"), Path("names/with space1.png")):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an output written before this run")
        corpus.existing[path] = path.read_bytes()
    for name in ("RGB_1x1.png", "L_1x1.png"):
        stale = out / "valid" / "png" / f".{name}.999999999-0123abcd.tmp"
        stale.write_bytes(b"half an image")
        corpus.stale_temporaries.append(stale)
    live = out / "valid" / "png" / ".busy.png.1-89abcdef.tmp"  # pid 1 runs: another job's file, kept
    live.write_bytes(b"another job is writing this")
    corpus.live_temporaries.append(live)
    return corpus


def _flip_bytes(rng: np.random.Generator, data: bytes) -> bytes:
    mutable = bytearray(data)
    for index in rng.integers(0, len(mutable), size=max(1, len(mutable) // 50)):
        mutable[index] ^= 0xFF
    return bytes(mutable)
