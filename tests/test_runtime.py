"""Runtime: backends agree with each other and with the eager baseline, input forms, errors, dynamic defence.

Tiny purifiers (a few channels, two blocks) keep every test fast; the maths is the same at full size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_deploy.artifacts.cache import CACHE_ENV
from nrp_deploy.artifacts.metadata import sidecar_path
from nrp_deploy.errors import BackendUnavailableError, InputError, NRPDeployError, StaleArtifactError
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.kernels import philox
from nrp_deploy.kernels.cuda_api import cuda_device_count
from nrp_deploy.models import load_model
from nrp_deploy.models.eager import EagerPurifier
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import (
    BackendOptions,
    DynamicDefense,
    TorchOptions,
    available_backends,
    load_purifier,
)
from nrp_deploy.runtime.backends import BackendNotActiveError, BaseBackend
from nrp_deploy.runtime.prepost import float_to_uint8

SPEC = ModelSpec("NRP_resG", {"nf": 8, "nb": 2})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private artifact cache for this module (never the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_resg.pth"
    torch.save(SPEC.build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ort_purifier(cache, checkpoint):
    return load_purifier(checkpoint, backend="onnxruntime", threads=1)


@pytest.fixture(scope="module")
def torch_purifier(cache, checkpoint):
    return load_purifier(checkpoint, backend="torch", threads=1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(3, 37, 29, 3), dtype=np.uint8)


# -- backends agree ------------------------------------------------------------------------------------


def test_onnxruntime_matches_torch_on_float_input(ort_purifier, torch_purifier, images):
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    a, b = ort_purifier(x), torch_purifier(x)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.abs(a - b).max() < 1e-4
    raw_a, raw_b = ort_purifier.infer(x), torch_purifier.infer(x)
    assert np.abs(raw_a - raw_b).max() < 1e-4
    assert raw_a.min() < 0 or raw_a.max() > 1, "random weights should produce values that the clamp removes"


def test_onnxruntime_matches_torch_on_uint8_input(ort_purifier, torch_purifier, images):
    a, b = ort_purifier(images), torch_purifier(images)
    assert a.dtype == np.uint8 and a.shape == images.shape
    # Model outputs agree within 1e-4, so bytes differ by at most one where a value sits on a rounding edge.
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.mean(a == b) > 0.999


def test_torch_backend_equals_eager_baseline(torch_purifier, checkpoint, images):
    eager = EagerPurifier(load_model(checkpoint).module)
    np.testing.assert_array_equal(torch_purifier(images), eager(images))


def test_torch_backend_runs_true_fp32_and_restores_the_tf32_switches(checkpoint, images, tf32_switches):
    """torch lets cuDNN run FP32 convolutions in TF32 by default; the FP32 backend switches TF32 off
    around each call (as TensorRT and ONNX Runtime have it) and leaves the switches as it found them."""
    seen: list[tuple[bool, bool]] = []
    tf32_switches(True)
    with load_purifier(checkpoint, backend="torch", threads=1) as purifier:
        module = purifier.backend._module

        def spy(x):
            seen.append(tf32_switches())
            return module(x)

        purifier.backend._module = spy
        purifier(images)
    assert seen == [(False, False)]
    assert tf32_switches() == (True, True)


def test_rounding_is_half_to_even_like_torch():
    values = np.array([0.5, 1.5, 2.5, 127.5, 128.5, 254.5], dtype=np.float32) / np.float32(255)
    y = values.reshape(1, 1, 2, 3).repeat(3, axis=1)
    expected = torch.from_numpy(y).clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(float_to_uint8(y), expected)


def test_auto_reports_its_choice(cache, checkpoint, caplog):
    with caplog.at_level("INFO", logger="nrp_deploy.runtime"):
        purifier = load_purifier(checkpoint, threads=1)
    assert f"chose {purifier.backend_name} on {purifier.backend.device}" in caplog.text
    if cuda_device_count() == 0:
        assert purifier.backend_name == "onnxruntime-cpu"
    assert purifier.spec == SPEC and purifier.receptive_field == SPEC.receptive_field


def test_unavailable_backend_says_what_to_install(cache, checkpoint):
    reason = available_backends()["tensorrt"]
    if reason is None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        load_purifier(checkpoint, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="unknown backend 'onnx-runtime'"):
        load_purifier(checkpoint, backend="onnx-runtime")


def test_torch_backend_refuses_int8_and_onnx_sources(cache, checkpoint, ort_purifier):
    with pytest.raises(BackendUnavailableError, match="int8"):
        load_purifier(checkpoint, backend="torch", precision="int8")
    with pytest.raises(BackendUnavailableError, match="checkpoints"):
        load_purifier(ort_purifier.backend.path, backend="torch")


def test_unknown_backend_option_is_an_input_error(cache, checkpoint):
    with pytest.raises(InputError, match="unknown onnxruntime backend option"):
        load_purifier(checkpoint, backend="onnxruntime", options={"thread": 2})


# -- the artifact cache ------------------------------------------------------------------------------


def test_cache_reuses_the_export(cache, checkpoint, ort_purifier):
    path = ort_purifier.backend.path
    assert path.parent == cache and path.name.startswith(sha256_file(checkpoint)[:16] + "-fp32-opset")
    before = path.stat().st_mtime_ns
    again = load_purifier(checkpoint, backend="onnxruntime", threads=1)
    assert again.backend.path == path and path.stat().st_mtime_ns == before


def test_onnx_source_runs_and_its_sidecar_is_checked(tmp_path, checkpoint, images, torch_purifier):
    onnx_path = tmp_path / "m.onnx"
    export_onnx(str(checkpoint), onnx_path)
    purifier = load_purifier(onnx_path, backend="onnxruntime", threads=1)
    assert purifier.spec == SPEC and purifier.precision == "fp32"
    assert np.abs(purifier(images).astype(int) - torch_purifier(images)).max() <= 1
    with pytest.raises(InputError, match="fp32 model but precision fp16"):
        load_purifier(onnx_path, backend="onnxruntime", precision="fp16")
    data = json.loads(sidecar_path(onnx_path).read_text())
    data["artifact_sha256"] = "0" * 64
    sidecar_path(onnx_path).write_text(json.dumps(data))
    with pytest.raises(StaleArtifactError):
        load_purifier(onnx_path, backend="onnxruntime")
    sidecar_path(onnx_path).unlink()  # a bare ONNX still runs; nothing is known about it
    bare = load_purifier(onnx_path, backend="onnxruntime", threads=1)
    assert bare.spec is None
    np.testing.assert_array_equal(bare(images), purifier(images))


# -- input forms and errors --------------------------------------------------------------------------


def test_input_forms_come_back_in_kind(ort_purifier, images):
    batch = ort_purifier(images)
    single = ort_purifier(images[1])
    assert single.shape == images[1].shape
    np.testing.assert_array_equal(single, batch[1])
    pil = ort_purifier(Image.fromarray(images[2]))
    assert isinstance(pil, Image.Image) and pil.size == (29, 37)
    np.testing.assert_array_equal(np.asarray(pil), batch[2])
    grey = ort_purifier(Image.fromarray(images[0, :, :, 0]))
    assert np.asarray(grey).shape == (37, 29, 3)


def test_list_of_images_of_many_sizes(ort_purifier, images):
    small = np.random.default_rng(1).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    inputs = [images[0], small, images[1], Image.fromarray(small)]
    out = ort_purifier(inputs)
    assert [type(o) for o in out] == [np.ndarray, np.ndarray, np.ndarray, Image.Image]
    np.testing.assert_array_equal(out[0], ort_purifier(images[0]))
    np.testing.assert_array_equal(out[1], ort_purifier(small))
    np.testing.assert_array_equal(np.asarray(out[3]), out[1])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((1, 8, 8, 3), dtype=np.int32), "unsupported dtype int32"),
        (np.zeros((1, 8, 8, 3), dtype=np.float64), "unsupported dtype float64"),
        (np.zeros((1, 2, 8, 8), dtype=np.float32), "3 \\(RGB\\) channels, got 2"),
        (np.zeros((1, 4, 8, 8), dtype=np.float32), "3 \\(RGB\\) channels, got 4"),
        (np.zeros((3, 8, 8), dtype=np.float32), "4-D NCHW batch, got 3-D"),
        (np.zeros((0, 3, 8, 8), dtype=np.float32), "empty input"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "empty input"),
        (np.zeros((1, 0, 8, 3), dtype=np.uint8), "empty input"),
        (np.full((1, 3, 8, 8), np.nan, dtype=np.float32), "NaN"),
        (np.full((1, 3, 8, 8), 1.5, dtype=np.float32), "must lie in \\[0, 1\\]"),
        (np.zeros((8, 8, 4), dtype=np.uint8), "drop the alpha channel"),
        (np.zeros((8, 8), dtype=np.uint8), "got 2-D"),
        (np.zeros((1, 1, 8, 8, 3), dtype=np.uint8), "got 5-D"),
        ([[0, 1], [2, 3]], "expected a numpy array or a PIL image, got list"),
        ([], "the list holds no image"),
    ],
)
def test_bad_inputs_give_clear_errors(ort_purifier, bad, message):
    with pytest.raises(InputError, match=message):
        ort_purifier(bad)


def test_images_over_the_hard_limit_are_refused(cache, checkpoint):
    purifier = load_purifier(checkpoint, backend="onnxruntime", max_pixels=32 * 32)
    purifier(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="33x32 = 1056 pixels exceeds the limit of 1024"):
        purifier(np.zeros((33, 32, 3), dtype=np.uint8))


# -- the dynamic defence ------------------------------------------------------------------------------


def test_philox_reference_reproduces_random123_known_answers():
    vectors = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in vectors:
        assert tuple(int(w) for w in philox.philox4x32_10(np.array(counter), np.array(key))) == expected


def test_dynamic_noise_is_standard_normal():
    noise = philox.dynamic_noise(1234, (4, 3, 64, 64))
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    assert abs(float(np.mean(np.abs(noise) < 1)) - 0.6827) < 0.01


def test_dynamic_defense_projection_and_determinism():
    rng = np.random.default_rng(3)
    x = rng.random((3, 3, 24, 20), dtype=np.float32)
    x[0, 0, :4] = 0.0
    x[0, 1, :4] = 1.0
    defense = DynamicDefense(seed=7)
    y = defense.apply(x, seed=7)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= np.float32(16 / 255) + 1e-7
    assert y.min() >= 0 and y.max() <= 1
    assert np.abs(y - x).mean() > 0.02, "noise of sigma 0.05 must move the input"
    np.testing.assert_array_equal(y, defense.apply(x, seed=7))
    assert not np.array_equal(y, defense.apply(x, seed=8))
    # Chunks purified with the image index of their first image give the noise of the whole batch.
    chunks = np.concatenate([defense.apply(x[:1], seed=7), defense.apply(x[1:], seed=7, start_index=1)])
    np.testing.assert_array_equal(chunks, y)


def test_dynamic_purification_seeded_chunked_and_fresh(ort_purifier, images):
    fixed = DynamicDefense(seed=2**63 + 5)
    whole = ort_purifier(images, dynamic=fixed)
    np.testing.assert_array_equal(whole, ort_purifier(images, dynamic=fixed))
    chunks = [ort_purifier(images[i : i + 1], dynamic=fixed, start_index=i) for i in range(len(images))]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    assert not np.array_equal(whole, ort_purifier(images))
    fresh = DynamicDefense()
    assert not np.array_equal(ort_purifier(images, dynamic=fresh), ort_purifier(images, dynamic=fresh))


def test_dynamic_defense_rejects_bad_settings():
    for kwargs in ({"sigma": -0.1}, {"eps": float("nan")}, {"seed": -1}, {"seed": 2**64}, {"seed": 1.5}):
        with pytest.raises(InputError):
            DynamicDefense(**kwargs)


# -- nrp purify through the runtime -------------------------------------------------------------------


def test_nrp_purify_backends_and_seeded_dynamic(cache, checkpoint, images, tmp_path, capsys):
    from nrp_deploy.cli import main
    from nrp_deploy.images import read_image, write_png

    src = tmp_path / "in"
    for k, image in enumerate(images):
        write_png(src / f"{k}.png", image)
    base = [str(src), "--model", str(checkpoint), "--no-progress", "--threads", "1", "--batch-size", "2"]

    assert main(["purify", *base, "-o", str(tmp_path / "eager"), "--backend", "torch"]) == 0
    assert "on torch-cpu (fp32, cpu)" in capsys.readouterr().err
    eager = EagerPurifier(load_model(checkpoint).module)(images)
    for k in range(len(images)):
        np.testing.assert_array_equal(read_image(tmp_path / "eager" / f"{k}.png"), eager[k])

    seeded = ["--backend", "onnxruntime", "--dynamic", "--seed", "9"]
    for run in ("a", "b"):
        assert main(["purify", *base, "-o", str(tmp_path / run), *seeded]) == 0
    outputs = [[read_image(tmp_path / run / f"{k}.png") for k in range(len(images))] for run in ("a", "b")]
    np.testing.assert_array_equal(np.stack(outputs[0]), np.stack(outputs[1]))
    purifier = load_purifier(checkpoint, backend="onnxruntime", threads=1)
    # Images are numbered across batches: image k gets noise index k, exactly as one call on all of them.
    np.testing.assert_array_equal(np.stack(outputs[0]), purifier(images, dynamic=DynamicDefense(seed=9)))

    assert main(["purify", *base, "-o", str(tmp_path / "c"), "--seed", "9"]) == 2
    assert "add --dynamic" in capsys.readouterr().err

    level = ["--noise-sigma", "0.02", "--noise-eps", "0.03"]
    assert main(["purify", *base, "-o", str(tmp_path / "level"), *seeded, *level]) == 0
    chosen = np.stack([read_image(tmp_path / "level" / f"{k}.png") for k in range(len(images))])
    expected = purifier(images, dynamic=DynamicDefense(sigma=0.02, eps=0.03, seed=9))
    np.testing.assert_array_equal(chosen, expected)
    assert not np.array_equal(chosen, np.stack(outputs[0]))  # the same seed at the published level differs


def test_torch_backend_options_channels_last_and_half(cache, checkpoint, torch_purifier, images):
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    reference = torch_purifier.infer(x)
    nhwc = load_purifier(checkpoint, backend="torch", threads=1, options={"channels_last": True})
    assert np.abs(nhwc.infer(x) - reference).max() < 1e-5
    half = load_purifier(checkpoint, backend="torch", precision="fp16", threads=1)
    assert half.precision == "fp16" and half.backend.input_spec.dtype == "float16"
    assert np.abs(half.infer(x) - reference).max() < 2e-2


def test_typed_backend_options_match_the_mapping_and_steer_auto(cache, checkpoint, torch_purifier, images):
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    typed = load_purifier(checkpoint, backend="torch", threads=1, options=TorchOptions(channels_last=True))
    assert typed.backend.channels_last and typed.backend.threads == 1
    assert np.abs(typed.infer(x) - torch_purifier.infer(x)).max() < 1e-5
    # another backend's options make auto move on (TensorRT, then ONNX Runtime), to the backend they are for
    chosen = load_purifier(checkpoint, options=TorchOptions(channels_last=True), threads=1)
    assert chosen.backend_name == "torch-cpu" and chosen.backend.channels_last
    with pytest.raises(BackendUnavailableError, match="options of the torch backend, not onnxruntime"):
        load_purifier(checkpoint, backend="onnxruntime", options=TorchOptions())
    common = load_purifier(checkpoint, backend="onnxruntime", options=BackendOptions(threads=1))
    assert common.backend.threads == 1


def test_a_backend_that_is_not_active_is_a_programming_error(cache, checkpoint):
    with load_purifier(checkpoint, backend="onnxruntime", threads=1) as purifier:
        backend = purifier.backend
        assert isinstance(backend, BaseBackend) and backend.is_active
    assert not backend.is_active
    with pytest.raises(BackendNotActiveError, match="not active") as raised:
        backend.infer(np.zeros((1, 3, 8, 8), np.float32))
    assert not isinstance(raised.value, NRPDeployError)  # not bad input: the caller's mistake
    backend.deactivate()  # twice is harmless


@pytest.mark.parametrize(
    ("precision", "label", "tolerance"), [("fp16", "fp16", 2e-2), ("int8", "int8-ort-any", 0.1)]
)
def test_reduced_precision_artifacts_are_made_once_and_cached(
    cache, checkpoint, torch_purifier, images, precision, label, tolerance
):
    purifier = load_purifier(checkpoint, backend="onnxruntime", precision=precision, threads=1)
    assert purifier.precision == precision
    path = purifier.backend.path
    assert path.name.startswith(f"{sha256_file(checkpoint)[:16]}-{label}-opset")
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert np.abs(purifier(x) - torch_purifier(x)).max() < tolerance
    before = path.stat().st_mtime_ns
    assert load_purifier(checkpoint, backend="onnxruntime", precision=precision).backend.path == path
    assert path.stat().st_mtime_ns == before
