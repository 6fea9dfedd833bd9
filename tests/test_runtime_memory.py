"""Memory budgets and automatic tiling: size parsing, MemAvailable and cgroup limits from injected files,
the activation estimate, and a tiny purifier that tiles (byte-identically) when its budget is too small."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_deploy.cli import main
from nrp_deploy.errors import InputError
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import load_purifier, memory
from nrp_deploy.runtime.purifier import MAX_MEMORY_TILE, MIN_MEMORY_TILE

GB = 10**9
TINY = ModelSpec("NRP_resG", {"nf": 8, "nb": 2})  # receptive-field radius 6: the default overlap is exact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GB", 4 * GB),
        ("512mb", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        (" 1.5 GB ", int(1.5 * GB)),
        ("1048576", 2**20),
        ("64KiB", 65536),
    ],
)
def test_sizes_parse_in_decimal_and_binary_units(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("text", ["4G", "four GB", "", "GB", "-1GB", "1.5", "4 GB RAM"])
def test_bad_sizes_are_named(text):
    with pytest.raises(InputError, match=f"memory budget {text!r} is not a size"):
        memory.parse_size(text)


def test_budget_forms_environment_and_errors():
    available = memory.Available(10 * GB, "MemAvailable")
    default = memory.resolve_budget(None, environ={}, available=available)
    assert default.bytes == 5 * GB and "default: 50% of 10.0 GB available, MemAvailable" in default.source
    assert memory.resolve_budget("25%", environ={}, available=available).bytes == int(2.5 * GB)
    assert memory.resolve_budget("3GB", environ={}).bytes == 3 * GB
    assert memory.resolve_budget(123, environ={}).bytes == 123
    assert memory.resolve_budget("OFF", environ={}) is None
    from_env = memory.resolve_budget(None, environ={memory.BUDGET_ENV: "1GB"})
    assert from_env == memory.MemoryBudget(GB, memory.BUDGET_ENV)
    assert memory.resolve_budget(None, environ={memory.BUDGET_ENV: "off"}) is None
    assert memory.resolve_budget("2GB", environ={memory.BUDGET_ENV: "1GB"}).bytes == 2 * GB  # explicit wins
    for bad, message in [
        ("150%", "percentage in"),
        ("0%", "percentage in"),
        ("x%", "percentage in"),
        (0, "positive number of bytes"),
        (-5, "positive number of bytes"),
        (True, "must be a size"),
        (2.5, "must be a size"),
        ("0GB", "more than 0 bytes"),
    ]:
        with pytest.raises(InputError, match=message):
            memory.resolve_budget(bad, environ={}, available=available)
    with pytest.raises(InputError, match=r"NRP_MEMORY_BUDGET='lots': memory budget 'lots' is not a size"):
        memory.resolve_budget(None, environ={memory.BUDGET_ENV: "lots"})


def _meminfo(tmp_path, kib):
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   {kib} kB\n")
    return path


def test_available_memory_is_the_least_of_meminfo_and_cgroup_v2_limits(tmp_path):
    meminfo = _meminfo(tmp_path, 20_000_000)  # about 20.5 GB
    root = tmp_path / "cgroup2"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "kubepods" / "memory.max").write_text(f"{4 * GB}\n")  # the parent's limit binds the child
    (root / "kubepods" / "memory.current").write_text(f"{GB}\n")
    (root / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    (root / "kubepods" / "pod1" / "memory.current").write_text(f"{GB}\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/kubepods/pod1\n")
    found = memory.available_memory(meminfo, self_cgroup, root)
    assert found.bytes == 3 * GB and found.source.endswith("kubepods/memory.max")
    self_cgroup.write_text("0::/\n")  # no limit anywhere: MemAvailable decides
    assert memory.available_memory(meminfo, self_cgroup, root) == memory.Available(
        20_000_000 * 1024, "MemAvailable"
    )


def test_cgroup_v1_limits_and_unlimited_markers(tmp_path):
    meminfo = _meminfo(tmp_path, 20_000_000)
    root = tmp_path / "cgroup1"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{2 * GB}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{GB // 2}\n")
    self_cgroup = tmp_path / "self_cgroup"
    # a container: the recorded path does not exist under its own mount, whose root is the container's
    self_cgroup.write_text("5:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n")
    assert memory.available_memory(meminfo, self_cgroup, root).bytes == 3 * GB // 2
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory.available_memory(meminfo, self_cgroup, root).source == "MemAvailable"


def test_activation_estimate_follows_the_widest_layer_and_the_backend():
    default = ModelSpec("NRP_resG", {"nf": 64, "nb": 6})
    ort = memory.activation_bytes(default, "onnxruntime", 2160, 3840)
    assert ort == pytest.approx(64 * 4 * 4.5 * 2160 * 3840, rel=1e-6)  # about 9.6 GB
    assert memory.activation_bytes(default, "onnxruntime", 2160, 3840, images=2) == pytest.approx(
        2 * ort, rel=1e-6
    )
    assert memory.activation_bytes(default, "tensorrt", 100, 100) == memory.activation_bytes(
        default, "torch", 100, 100
    )
    assert [memory.live_maps(n) for n in ("onnxruntime-cpu", "openvino-cpu-bf16", "torch-cpu")] == [
        4.5,
        2.4,
        5.3,
    ]
    assert memory.live_maps("tensorrt") == memory.LIVE_MAPS_DEFAULT == 5.3
    nrp = ModelSpec("NRP", {"nf": 64, "gc": 32, "nb": 1})
    assert nrp.widest_channels == 192 and default.widest_channels == 64
    side = memory.largest_square(default, "openvino", GB, images=2)
    assert memory.activation_bytes(default, "openvino", side, side, 2) <= GB
    assert memory.activation_bytes(default, "openvino", side + 1, side + 1, 2) > GB
    assert memory.tile_side(default, "openvino", GB, 2, 144, None) == (side // 8 * 8, True)
    assert memory.tile_side(default, "openvino", GB, 2, 144, 512) == (512, True)  # the profile's largest
    assert memory.tile_side(default, "openvino", 1000, 2, 144, None) == (144, False)  # nothing fits


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("memory") / "tiny.pth"
    torch.save(TINY.build().state_dict(), path)
    return path


def _calls(purifier):
    shapes = []
    infer = purifier.backend.infer

    def recording(x):
        shapes.append(x.shape)
        return infer(x)

    purifier.backend.infer = recording
    return shapes


def test_an_image_over_the_budget_is_tiled_byte_identically_and_said(tiny_checkpoint, caplog):
    image = np.random.default_rng(5).integers(0, 256, (200, 230, 3), dtype=np.uint8)
    per_pixel = TINY.widest_channels * 4 * memory.live_maps("torch-cpu")
    budget = int(per_pixel * 170 * 170)  # room for a 170 px tile, not the whole image
    untiled = load_purifier(tiny_checkpoint, backend="torch", threads=1, memory_budget="off")
    tiled = load_purifier(tiny_checkpoint, backend="torch", threads=1, memory_budget=budget)
    untiled_calls, tiled_calls = _calls(untiled), _calls(tiled)
    with caplog.at_level(logging.INFO, logger="nrp_deploy.runtime.autotile"):
        out = tiled(image)
    assert untiled_calls == [] and np.array_equal(out, untiled(image))
    assert untiled_calls == [(1, 3, 200, 230)]
    assert len(tiled_calls) == 4 and all(shape == (1, 3, 168, 168) for shape in tiled_calls)  # 170 -> x8
    (record,) = [r for r in caplog.records if r.name == "nrp_deploy.runtime.autotile"]
    message = record.getMessage()
    assert message.startswith("1 image(s) of 200x230 (HxW)") and "on torch-cpu" in message
    assert f"{memory.format_bytes(budget)} memory budget (memory_budget)" in message
    assert "tiling at 168 px (overlap 32 px, feather 16 px)" in message
    # an explicit tile wins over the budget, and nothing is said
    caplog.clear()
    explicit = load_purifier(tiny_checkpoint, backend="torch", threads=1, tile=220, memory_budget=budget)
    explicit_calls = _calls(explicit)
    with caplog.at_level(logging.INFO, logger="nrp_deploy.runtime.autotile"):
        assert np.array_equal(explicit(image), out)
    assert {shape[2:] for shape in explicit_calls} == {(200, 220)} and not caplog.records


def test_a_budget_below_the_smallest_tile_still_runs_and_says_so(tiny_checkpoint, caplog):
    image = np.random.default_rng(6).integers(0, 256, (40, 400, 3), dtype=np.uint8)
    purifier = load_purifier(tiny_checkpoint, backend="torch", threads=1, memory_budget="1KB")
    calls = _calls(purifier)
    with caplog.at_level(logging.INFO, logger="nrp_deploy.runtime.autotile"):
        out = purifier(image)
    assert np.array_equal(out, load_purifier(tiny_checkpoint, backend="torch", memory_budget="off")(image))
    assert {shape[2:] for shape in calls} == {(40, MIN_MEMORY_TILE)}
    assert "the smallest tile, still over the budget" in caplog.records[0].getMessage()


def test_automatic_tiles_stay_small_even_when_a_larger_one_would_fit(tiny_checkpoint):
    image = np.random.default_rng(9).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    just_under = memory.activation_bytes(TINY, "torch-cpu", 1100, 1100) - 1  # a 1096 px tile would fit
    purifier = load_purifier(tiny_checkpoint, backend="torch", threads=1, memory_budget=just_under)
    calls = _calls(purifier)
    purifier(image)
    assert calls == [(1, 3, MAX_MEMORY_TILE, MAX_MEMORY_TILE)] * 4


def test_whole_images_are_batched_only_as_far_as_the_budget_allows(tiny_checkpoint, caplog):
    images = np.random.default_rng(7).integers(0, 256, (5, 40, 50, 3), dtype=np.uint8)
    one = memory.activation_bytes(TINY, "torch-cpu", 40, 50)
    purifier = load_purifier(tiny_checkpoint, backend="torch", threads=1, memory_budget=2 * one + 1)
    calls = _calls(purifier)
    with caplog.at_level(logging.INFO, logger="nrp_deploy.runtime.autotile"):
        out = purifier(images)
    assert [shape[0] for shape in calls] == [2, 2, 1] and not caplog.records  # batched, not tiled
    assert np.array_equal(out, load_purifier(tiny_checkpoint, backend="torch", memory_budget="off")(images))


def test_purify_cli_takes_a_budget_reports_tiling_and_names_a_bad_budget(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = np.random.default_rng(8).integers(0, 256, (180, 210, 3), dtype=np.uint8)
    Image.fromarray(photo).save(folder / "photo.png")
    base = [str(folder), "--model", str(tiny_checkpoint), "--backend", "torch", "--no-progress"]
    assert main(["purify", *base, "-o", str(tmp_path / "auto"), "--memory-budget", "200KB"]) == 0
    err = capsys.readouterr().err
    assert "nrp purify: 1 image(s) of 180x210 (HxW)" in err and "200.0 KB memory budget" in err
    assert main(["purify", *base, "-o", str(tmp_path / "whole"), "--memory-budget", "off"]) == 0
    assert "image(s) of" not in capsys.readouterr().err
    auto = np.asarray(Image.open(tmp_path / "auto" / "photo.png"))
    assert np.array_equal(auto, np.asarray(Image.open(tmp_path / "whole" / "photo.png")))
    assert main(["purify", *base, "-o", str(tmp_path / "bad"), "--memory-budget", "lots"]) == 2
    assert "memory budget 'lots' is not a size" in capsys.readouterr().err
    assert (
        main(
            [
                "purify",
                str(folder),
                "-o",
                str(tmp_path / "r"),
                "--server",
                "http://x:1",
                "--memory-budget",
                "1GB",
            ]
        )
        == 2
    )
    assert "--memory-budget configure an in-process purifier" in capsys.readouterr().err
