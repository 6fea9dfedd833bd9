"""Hostile inputs, bad weights, lost outputs and memory: one test per defect, each failing without its fix.

The models are tiny: a one-convolution ONNX built without torch (tests/hostile_inputs.py), or an
NRP_resG checkpoint with 4 channels and one block.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_inputs import FOREIGN, encode, png_declaring, random_image, tiny_onnx
from PIL import Image
from sidecars import write_sidecar

from nrp_deploy.artifacts.cache import cached_onnx_path
from nrp_deploy.artifacts.metadata import judge
from nrp_deploy.artifacts.sources import identify
from nrp_deploy.batch import by_index_runs, purify_files
from nrp_deploy.cli import main
from nrp_deploy.errors import (
    CheckpointError,
    FidelityError,
    ImageError,
    InputError,
    ModelError,
)
from nrp_deploy.export.fidelity import ErrorStats
from nrp_deploy.fileutil import NAME_MAX, atomic_output, remove_stale_temporaries, sha256_file
from nrp_deploy.images import collect_images, read_image, scan_images, write_png
from nrp_deploy.models import ModelSpec, load_model
from nrp_deploy.runtime import load_purifier
from nrp_deploy.runtime.prepost import prepare

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(11)


def _png(path: Path, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _ort(path: Path, **kwargs):
    return load_purifier(path, backend="onnxruntime", threads=1, **kwargs)


@pytest.fixture()
def onnx_model(tmp_path):
    return tiny_onnx(tmp_path / "tiny.onnx")


def _checkpoint(path: Path, edit=None, **config) -> Path:
    """A tiny NRP_resG checkpoint (4 features, 1 block; ``config`` overrides), its state dict edited."""
    torch.manual_seed(0)
    state = ModelSpec("NRP_resG", {"nf": 4, "nb": 1, **config}).build().state_dict()
    if edit is not None:
        edit(state)
    torch.save(state, path)
    return path


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    return _checkpoint(tmp_path / "tiny.pth")


def _purify_one(tmp_path: Path, model: Path, *extra: str) -> tuple[int, Path]:
    """Exit status of `nrp purify` on one 16 x 16 image (the output is ``tmp_path/out/x.png``)."""
    src = _png(tmp_path / "in" / "x.png", (16, 16))
    argv = ["purify", str(src), "-o", str(tmp_path / "out"), "--model", str(model), "--no-progress"]
    return main([*argv, *extra]), src


def _identity(batch: np.ndarray, indices) -> np.ndarray:
    return batch.copy()


# 1. One bad file must fail alone ------------------------------------------------------------------------


def test_foreign_decoder_data_fails_that_file_only(tmp_path):
    src = tmp_path / "in"
    dds = b"DDS " + np.array([124, 0x1007, 16, 16, 0, 0, 0], "<u4").tobytes() + bytes(44)
    dds += np.array([32, 0x4], "<u4").tobytes() + b"ZZZZ" + bytes(20 + 1024)
    (src / "a_dds.png").parent.mkdir()
    (src / "a_dds.png").write_bytes(dds)  # a DDS with an unknown pixel format: NotImplementedError in Pillow
    _png(src / "b.png")
    _png(src / "c.png")
    report = purify_files([src], tmp_path / "out", _identity, progress=False)
    assert [p.name for p, _ in report.failed] == ["a_dds.png"]
    assert report.failed[0][1].startswith("not an image in a supported format")
    assert sorted(p.name for p in report.written) == ["b.png", "c.png"]


def test_summary_names_each_failed_path_once(tmp_path, onnx_model, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bad.png").write_bytes(b"not an image")
    (src / "empty.png").write_bytes(b"")
    _png(src / "good.png")
    report = purify_files([src], tmp_path / "out", _identity, progress=False)
    failures = [line for line in report.summary().splitlines() if "FAILED" in line]
    assert len(failures) == 2
    for line, name in zip(sorted(failures), ["bad.png", "empty.png"], strict=True):
        assert line.count(name) == 1 and line.startswith(f"  FAILED {src / name}: ")
        assert "supported format" in line or "empty" in line, line
    argv = ["purify", str(src), "-o", str(tmp_path / "out2"), "--model", str(onnx_model), "--no-progress"]
    assert main([*argv, "--backend", "onnxruntime"]) == 1
    err = capsys.readouterr().err
    assert err.count("bad.png") == 1 and f"FAILED {src / 'bad.png'}: not an image" in err


def _foreign_sample(fmt: str) -> bytes | None:
    """A small image encoded as ``fmt``, or None where this Pillow cannot write that format."""
    mode = {"SPIDER": "F", "XBM": "1", "PALM": "P"}.get(fmt, "RGB")
    try:
        return encode(random_image(np.random.default_rng(0), mode, (16, 16)), fmt)
    except (OSError, ValueError, KeyError):
        return None


WRITABLE_FOREIGN = tuple(fmt for fmt in FOREIGN if _foreign_sample(fmt) is not None)


@pytest.mark.parametrize("fmt", WRITABLE_FOREIGN)
def test_formats_outside_the_supported_set_are_refused(tmp_path, fmt):
    data = _foreign_sample(fmt)
    assert data is not None
    (tmp_path / "x.png").write_bytes(data)
    with pytest.raises(ImageError, match=r"x\.png: not an image in a supported format"):
        read_image(tmp_path / "x.png")


# 2. Non-finite weights and outputs, FAIL verdicts ------------------------------------------------------


def test_nan_weights_checkpoint_refused(tmp_path, capsys):
    def poison(state):
        state["conv_first.weight"][0, 0, 0, 0] = float("nan")
        state["conv_last.bias"][0] = float("inf")

    bad = _checkpoint(tmp_path / "nan.pth", poison)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 2 tensor\(s\): conv_first.weight"):
        load_model(bad)
    assert _purify_one(tmp_path, bad, "--backend", "torch")[0] == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "out" / "x.png").exists()


def test_nonfinite_model_output_refused(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "nan.onnx", weight_value=float("nan"))
    with _ort(model) as purifier, pytest.raises(ModelError, match="NaN or infinite values"):
        purifier(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    rc, src = _purify_one(tmp_path, model, "--backend", "onnxruntime")
    assert rc == 1 and f"FAILED {src}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "x.png").exists()


def test_fail_verdict_stops_use_unless_forced(tmp_path, onnx_model, capsys):
    write_sidecar(onnx_model, psnr_db=12.0)
    with pytest.raises(FidelityError, match=r"FAIL fp32 tiny.onnx.*allow_failed=True \(--allow-failed\)"):
        _ort(onnx_model)
    with _ort(onnx_model, allow_failed=True) as purifier:
        assert purifier(RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)).shape == (6, 6, 3)
    assert _purify_one(tmp_path, onnx_model, "--backend", "onnxruntime")[0] == 2
    assert "--allow-failed" in capsys.readouterr().err
    assert _purify_one(tmp_path, onnx_model, "--backend", "onnxruntime", "--allow-failed")[0] == 0
    assert (tmp_path / "out" / "x.png").is_file()


def test_cached_artifact_with_fail_verdict_is_not_used(tmp_path, tiny_checkpoint, onnx_model):
    from nrp_deploy.artifacts.metadata import DEFAULT_OPSET

    checksum = sha256_file(tiny_checkpoint)
    cached = cached_onnx_path(checksum, "fp32", DEFAULT_OPSET)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(onnx_model.read_bytes())
    write_sidecar(cached, psnr_db=3.0, source_sha=checksum)
    try:
        with pytest.raises(FidelityError, match="failed its fidelity check"):
            load_purifier(tiny_checkpoint, backend="onnxruntime")
        assert identify(tiny_checkpoint, allow_failed=True).allow_failed
        load_purifier(tiny_checkpoint, backend="onnxruntime", allow_failed=True).close()
    finally:
        cached.unlink()
        Path(str(cached) + ".json").unlink()


def test_cached_artifact_changed_after_export_is_not_used_but_exported_again(tiny_checkpoint, caplog):
    from nrp_deploy.artifacts.metadata import DEFAULT_OPSET, verify_artifact

    image = RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    with _ort(tiny_checkpoint) as purifier:
        expected = purifier(image)
    cached = cached_onnx_path(sha256_file(tiny_checkpoint), "fp32", DEFAULT_OPSET)
    tiny_onnx(cached)  # another model's bytes under the cached name; its sidecar still describes the export
    with caplog.at_level("WARNING"), _ort(tiny_checkpoint) as purifier:
        assert np.array_equal(purifier(image), expected)
    assert "ignoring cached artifact" in caplog.text and "changed after export" in caplog.text
    assert verify_artifact(cached).artifact_sha256 == sha256_file(cached)  # the cache holds a good one again


def test_fidelity_counts_nan_as_the_worst_error():
    stats = ErrorStats()
    stats.add(np.array([0.5, np.nan], np.float32), np.array([0.5, 0.5], np.float32))
    assert stats.max_abs == float("inf")
    assert not judge("fp32", "m.onnx", stats.fidelity(), 80.0, "x").passed


# 3, 4. No output lost or replaced ------------------------------------------------------------------------


def test_output_name_collisions_refused_before_writing(tmp_path):
    src = tmp_path / "in"
    for name in ("a.jpg", "a.png", "Case.PNG", "Case.png", "Mixed.png", "mixed.bmp", "unique.png"):
        _png(src / name)
    report = purify_files([src], tmp_path / "out", _identity, progress=False)
    assert sorted(p.name for p, _ in report.failed) == [
        "Case.PNG", "Case.png", "Mixed.png", "a.jpg", "a.png", "mixed.bmp"
    ]  # fmt: skip
    messages = dict((p.name, m) for p, m in report.failed)
    assert "would also be written from" in messages["a.jpg"] and str(src / "a.png") in messages["a.jpg"]
    assert [p.name for p in report.written] == ["unique.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["unique.png"]


def test_output_file_and_output_folder_of_one_name_refused_together(tmp_path):
    src = tmp_path / "in"
    for name in ("x.jpg", "x.png/inner.png", "X.PNG/deeper/more.png", "other.png"):
        _png(src / name)
    out = tmp_path / "out"
    report = purify_files([src], out, _identity, progress=False)
    messages = {p.relative_to(src).as_posix(): m for p, m in report.failed}
    assert sorted(messages) == ["X.PNG/deeper/more.png", "x.jpg", "x.png/inner.png"]
    assert "would also be a folder holding the outputs of" in messages["x.jpg"]
    assert str(src / "x.png" / "inner.png") in messages["x.jpg"]
    assert f"which would also be written as a file from {src / 'x.jpg'}" in messages["x.png/inner.png"]
    assert [p.name for p in report.written] == ["other.png"] and not report.skipped
    assert sorted(p.name for p in out.iterdir()) == ["other.png"]


def test_existing_file_or_folder_blocking_an_output_is_a_failure_not_a_skip(tmp_path):
    src = tmp_path / "in"
    _png(src / "a.png")
    _png(src / "b" / "inner.png")
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)  # a folder where a.png goes
    (out / "b").write_bytes(b"a file where the folder b goes")
    report = purify_files([src], out, _identity, progress=False)
    messages = {p.name: m for p, m in report.failed}
    assert messages == {
        "a.png": f"cannot write {out / 'a.png'}: a folder of that name exists",
        "inner.png": f"cannot write {out / 'b' / 'inner.png'}: {out / 'b'} exists and is not a folder",
    }
    assert not report.skipped and not report.written


def test_summary_names_every_skipped_output(tmp_path):
    src = tmp_path / "in"
    for name in ("a.png", "sub/b.png", "c.png"):
        _png(src / name)
    out = tmp_path / "out"
    assert purify_files([src], out, _identity, progress=False).ok
    (out / "c.png").unlink()
    report = purify_files([src], out, _identity, progress=False)
    assert report.summary().splitlines() == [
        "1 written, 2 skipped (exist), 0 failed",
        f"  SKIPPED {out / 'a.png'}: exists",
        f"  SKIPPED {out / 'sub' / 'b.png'}: exists",
    ]


def test_output_that_appears_during_the_run_is_kept(tmp_path):
    src = _png(tmp_path / "in" / "x.png")
    target = tmp_path / "out" / "x.png"

    def purify_while_someone_writes(batch, indices):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"written by another job meanwhile")
        return batch.copy()

    report = purify_files([src], tmp_path / "out", purify_while_someone_writes, progress=False)
    assert report.skipped == [target] and not report.written and report.ok
    assert target.read_bytes() == b"written by another job meanwhile"
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]  # no temporary left
    report = purify_files(
        [src], tmp_path / "out", purify_while_someone_writes, overwrite=True, progress=False
    )
    assert report.written == [target]
    np.testing.assert_array_equal(read_image(target), read_image(src))


def test_output_replacing_its_input_refused(tmp_path):
    src = _png(tmp_path / "a.png")
    original = src.read_bytes()
    report = purify_files([src], tmp_path, _identity, overwrite=True, progress=False)
    assert "would replace an input file" in report.failed[0][1]
    assert src.read_bytes() == original


# 5, 6. Foreign ONNX models: inputs and outputs checked ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 4}, "input 'input' has 4 channels"),
        ({"in_channels": 3, "out_channels": 1}, "output 'output' has 1 channels"),
        (
            {"input_shape": (3, 16, 16), "reshape_to": (1, 3, 16, 16)},
            "a purifier's input is an NCHW image batch",
        ),
        ({"input_shape": (2, 3, "H", "W")}, "dynamic \\(or 1\\) batch size"),
    ],
)
def test_foreign_onnx_refused_at_activation(tmp_path, kwargs, message):
    model = tiny_onnx(tmp_path / "foreign.onnx", **kwargs)
    with pytest.raises(ModelError, match=message):
        _ort(model)


def test_onnx_runtime_errors_are_wrapped_with_what_was_expected(tmp_path):
    model = tiny_onnx(tmp_path / "reshape.onnx", reshape_to=(1, 3, 16, 16))
    with _ort(model) as purifier:
        assert purifier(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).shape == (16, 16, 3)
        with pytest.raises(
            ModelError, match=r"ONNX Runtime failed to run .*reshape.onnx on an input of shape"
        ):
            purifier(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8))


def test_fixed_shape_onnx_is_tiled_and_padded(tmp_path):
    fixed = tiny_onnx(tmp_path / "fixed.onnx", input_shape=(1, 3, 16, 16))
    dynamic = tiny_onnx(tmp_path / "dynamic.onnx")
    images = [RNG.integers(0, 256, size, dtype=np.uint8) for size in ((20, 37, 3), (16, 16, 3), (2, 3, 3))]
    with _ort(fixed) as a, _ort(dynamic) as b:
        assert a.backend.profile.max == (1, 16, 16)
        for image in images[:2]:
            np.testing.assert_array_equal(a(image), b(image))  # overlap 7 >= the 3x3 kernel's radius
        assert a(images[2]).shape == (2, 3, 3)  # smaller than the model: reflect-padded, cropped back


def test_output_of_another_size_is_refused(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "half.onnx", stride=2)
    with _ort(model) as purifier, pytest.raises(ModelError, match=r"returned shape \(1, 3, 8, 8\)"):
        purifier(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert _purify_one(tmp_path, model, "--backend", "onnxruntime")[0] == 1
    assert "a purifier must return an image of its input's size" in capsys.readouterr().err
    assert not (tmp_path / "out" / "x.png").exists()


def test_batch_rejects_a_result_of_the_wrong_shape(tmp_path):
    src = _png(tmp_path / "in" / "x.png")
    report = purify_files([src], tmp_path / "out", lambda b, indices: b[..., :1].copy(), progress=False)
    assert "returned uint8 (1, 12, 10, 1) for a uint8 batch of shape (1, 12, 10, 3)" in report.failed[0][1]


def test_job_index_is_the_place_in_scan_order_whatever_the_batching(tmp_path):
    """The dynamic defence's noise index of a file is its place among the files found (a bad file keeps its
    place), and ``by_index_runs`` hands each run of consecutive indices to the purifier as one call."""
    src = tmp_path / "in"
    for k in range(7):
        _png(src / f"{k}.png", (12, 10) if k % 2 else (10, 12))
    (src / "3.png").write_bytes(b"broken")
    seen: dict[int, bytes] = {}
    starts: list[tuple[int, int]] = []

    def record(batch, start):
        starts.append((start, len(batch)))
        for row, image in enumerate(batch):
            seen[start + row] = image.tobytes()
        return batch.copy()

    report = purify_files([src], tmp_path / "out", by_index_runs(record), batch_size=3, progress=False)
    assert len(report.written) == 6 and [p.name for p, _ in report.failed] == ["3.png"]
    expected = {k: read_image(src / f"{k}.png").tobytes() for k in range(7) if k != 3}
    assert seen == expected
    assert sorted(starts) == [(0, 1), (1, 1), (2, 1), (4, 1), (5, 1), (6, 1)]  # sizes alternate: no runs

    starts.clear()
    for k in (1, 3, 5):
        _png(src / f"{k}.png", (10, 12))
    purify_files([src], tmp_path / "again", by_index_runs(record), batch_size=8, progress=False)
    assert starts == [(0, 7)]


# 7. Memory: sizes are checked before anything is copied or decoded ---------------------------------------


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (10**6, 10**6, 3)),
        lambda: np.zeros((8193, 8193, 3), np.uint8),
        lambda: np.broadcast_to(np.zeros((1, 1, 1, 1), np.float32), (1, 3, 10**6, 10**6)),
        lambda: [np.zeros((4, 4, 3), np.uint8), np.zeros((8193, 8193, 3), np.uint8)],
    ],
    ids=["broadcast-1e12", "8193x8193", "float-broadcast", "list"],
)
def test_oversized_arrays_refused_without_allocating(onnx_model, make):
    images = make()
    with _ort(onnx_model) as purifier:

        def call():
            with pytest.raises(InputError, match="exceeds the limit of 67108864"):
                purifier(images)

        assert _peak_bytes(call) < 1 << 20


def test_oversized_pil_image_refused_before_decoding(tmp_path, onnx_model):
    (tmp_path / "big.png").write_bytes(png_declaring(8200, 8200, b"\x00" * 64))
    with _ort(onnx_model) as purifier, Image.open(tmp_path / "big.png") as lazy:
        with pytest.raises(InputError, match="8200x8200"):
            purifier(lazy)
        assert lazy.tile  # its decoding is still pending: nothing was decoded


def test_declared_size_checked_before_decoding(tmp_path):
    (tmp_path / "big.png").write_bytes(png_declaring(5000, 5000, b"\x00" * 64))
    with pytest.raises(ImageError, match="refused before decoding"):
        read_image(tmp_path / "big.png", max_pixels=4096 * 4096)


# 8. PIL images from the API are scaled like files --------------------------------------------------------


def test_pil_images_scaled_like_files(tmp_path):
    deep = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    image16 = Image.fromarray(deep).convert("I;16")
    np.testing.assert_array_equal(prepare(image16).batch[0, ..., 0], np.rint(deep / 257).astype(np.uint8))
    image16.save(tmp_path / "deep.png")
    np.testing.assert_array_equal(prepare(image16).batch[0], read_image(tmp_path / "deep.png"))
    unit = RNG.random((5, 7), dtype=np.float32)
    expected = np.rint(unit.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(prepare(Image.fromarray(unit, mode="F")).batch[0, ..., 1], expected)
    assert prepare(Image.new("La", (4, 3))).batch.shape == (1, 3, 4, 3)


def test_truncated_lazy_pil_image_named(tmp_path, onnx_model):
    data = encode(random_image(RNG, "RGB", (32, 32)), "PNG")
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))
    with (
        _ort(onnx_model) as purifier,
        pytest.raises(InputError, match=r"PIL image of mode RGB .* cannot be decoded"),
    ):
        purifier(lazy)


# 9. Nothing blocks, nothing is skipped silently ----------------------------------------------------------


def test_folders_read_for_training_calibration_and_evaluation_name_what_they_pass_over(tmp_path, caplog):
    root = tmp_path / "in"
    _png(root / "ok.png")
    os.mkfifo(root / "fifo.png")
    with caplog.at_level("WARNING", logger="nrp_deploy.images"):
        assert [t.source.name for t in collect_images([root])] == ["ok.png"]
    assert f"passed over {root / 'fifo.png'}: not a regular file but a FIFO" in caplog.text


def test_special_files_named_and_never_block(tmp_path):
    root = tmp_path / "in"
    _png(root / "ok.png")
    os.mkfifo(root / "fifo.png")
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "null.jpg").symlink_to("/dev/null")
    (root / "loop").symlink_to(root)
    found = scan_images([root])
    assert [t.source.name for t in found.tasks] == ["ok.png"]
    assert dict((p.name, why) for p, why in found.passed_over) == {
        "dangling.png": "dangling symbolic link",
        "fifo.png": "not a regular file but a FIFO",
        "loop": "symbolic link loop (leads back to a folder being walked)",
        "null.jpg": "not a regular file but a character device",
    }
    outcome: list[BaseException] = []

    def read_fifo():
        try:
            read_image(root / "fifo.png")
        except ImageError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read_fifo, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert "not a regular file but a FIFO" in str(outcome[0])
    report = purify_files([root], tmp_path / "out", _identity, progress=False)
    assert len(report.failed) == 4 and [p.name for p in report.written] == ["ok.png"]


# 10. Long names, stale temporaries, SIGTERM --------------------------------------------------------------


def test_names_up_to_the_limit_can_be_written(tmp_path):
    for name in ("n" * 241 + ".png", "n" * 251 + ".png", "é" * 125 + ".png"):
        assert len(os.fsencode(name)) <= NAME_MAX
        write_png(tmp_path / name, np.zeros((2, 2, 3), np.uint8))
        assert read_image(tmp_path / name).shape == (2, 2, 3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".x.png.{int(dead.stdout)}-0123abcd.tmp"
    live = tmp_path / f".y.png.{os.getpid()}-0123abcd.tmp"
    other = tmp_path / ".not-ours.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and other.exists()


def test_temporary_removed_when_the_write_fails(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "x.png") as fh:
        fh.write(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


SLOW_WRITES = """
import sys, time
from PIL import Image
save = Image.Image.save
def slow_save(self, *args, **kwargs):
    time.sleep(0.2)
    return save(self, *args, **kwargs)
Image.Image.save = slow_save
from nrp_deploy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_cleans_up_and_says_so(tmp_path, onnx_model):
    src = tmp_path / "in"
    for k in range(40):
        _png(src / f"{k:02d}.png", (8, 8))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    argv = ["purify", str(src), "-o", str(out), "--model", str(onnx_model), "--backend", "onnxruntime"]
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITES, *argv, "--no-progress", "--batch-size", "1"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(out.glob("*.png"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    written = list(out.iterdir())
    assert 0 < len(written) < 40 and all(p.suffix == ".png" for p in written)
    for path in written:
        assert read_image(path).shape == (8, 8, 3)


# 11. Arguments and checkpoints that used to give unnamed errors ------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": "abc"}, "tile must be a positive number of pixels"),
        ({"tile": 0}, r"tile must be a positive number of pixels \(or a TileConfig\), got 0"),
        ({"tile": 2.5}, "tile must be a positive number of pixels"),
        ({"tile": 32, "overlap": -1}, "overlap must be a number of pixels >= 0"),
        ({"max_pixels": 0}, "max_pixels must be a positive integer"),
    ],
)
def test_bad_purifier_arguments_named(onnx_model, kwargs, message):
    with pytest.raises(InputError, match=message):
        _ort(onnx_model, **kwargs)


@pytest.mark.parametrize("dynamic", [True, 0.05, "yes"])
def test_bad_dynamic_argument_named(onnx_model, dynamic):
    with _ort(onnx_model) as purifier, pytest.raises(InputError, match="dynamic must be a DynamicDefense"):
        purifier(np.zeros((4, 4, 3), np.uint8), dynamic=dynamic)


def test_missing_source_named():
    with pytest.raises(InputError, match="model source must be a registry name or a path"):
        load_purifier(None)
    with pytest.raises(CheckpointError, match="model source must be a registry name or a checkpoint path"):
        load_model(None)


def test_float_range_message_shows_the_offending_value(onnx_model):
    x = np.full((1, 3, 4, 4), 0.5, np.float32)
    x[0, 0, 0, 0] = 1.0001
    with _ort(onnx_model) as purifier, pytest.raises(InputError, match=r"values up to 1\.0001"):
        purifier(x)


def test_zero_dimensional_weights_refused(tmp_path):
    scalar = _checkpoint(
        tmp_path / "scalar.pth", lambda state: state.update({"conv_first.weight": torch.tensor(1.0)})
    )
    with pytest.raises(
        CheckpointError, match=r"conv_first.weight has shape \(\); a convolution weight has 4"
    ):
        load_model(scalar)


def test_non_rgb_checkpoint_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="has 4 input channels; a purifier takes and returns 3") as info:
        load_model(_checkpoint(tmp_path / "rgba.pth", in_nc=4))
    assert "\n" not in str(info.value)
