"""Batch purification on Ray Data (nrp_deploy.scale): byte for byte ``nrp purify``, bad files, a killed actor.

One local Ray per module, on loopback, with two CPUs and no dashboard; its session folder (and the token
file Ray writes under the home folder) live in a temporary folder that is removed after, and the test checks
that no process of that Ray is left. The actor's own behaviour (columns, bad rows, noise keys) is tested
without Ray, by calling the class as Ray would.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ci_rule import unavailable

from nrp_deploy.cli import main
from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.images import read_image, write_png
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import DynamicDefense, load_purifier
from nrp_deploy.scale import BatchPurifier, PurifierSettings, path_index, purify_files_on_ray
from nrp_deploy.scale.job import import_ray

SEED = 11
SUMMARY_LINE = re.compile(r"^(\d+ written, |  FAILED |  SKIPPED )")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny purifier as ONNX (the actors load it with ONNX Runtime: no torch, no export per actor)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 2}).build().state_dict(), folder / "tiny.pth")
    export_onnx(folder / "tiny.pth", folder / "tiny.onnx", check_shapes=[(1, 3, 16, 16)])
    return folder / "tiny.onnx"


@pytest.fixture(scope="module")
def settings(model):
    return PurifierSettings(str(model), backend="onnxruntime", threads=1, dynamic=DynamicDefense(seed=SEED))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two sizes interleaved, a subfolder, and three bad files among them."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for k in range(9):
        shape = (24, 32, 3) if k % 3 else (32, 20, 3)
        write_png(root / ("sub" if k >= 6 else "") / f"p{k}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    (root / "p3b.png").write_bytes(b"not a png at all")
    (root / "sub" / "cut.png").write_bytes((root / "p1.png").read_bytes()[:60])
    (root / "sub" / "text.jpg").write_text("hello")
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for this module; afterwards no process of it and none of its files are left."""
    try:
        ray = import_ray()
    except BackendUnavailableError as exc:
        unavailable(str(exc))
    folder = Path(tempfile.mkdtemp(prefix="nrp-ray-"))  # short: Ray's socket paths must fit 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(folder))  # Ray writes its token to ~/.ray/auth_token
        start = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=128 << 20,  # the tests move kilobytes; CI containers have little /dev/shm
            _node_ip_address="127.0.0.1",
            _temp_dir=str(folder / "t"),
            logging_level="WARNING",
        )
        print(f"Ray started in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import tests/
        try:
            yield ray
        finally:
            ray.shutdown()
    deadline = time.monotonic() + 30
    while (left := _processes_mentioning(str(folder))) and time.monotonic() < deadline:
        time.sleep(0.5)
    shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"Ray processes left after shutdown: {left}"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and the report's lines (sorted: Ray's order of results is not the files' order)."""
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if SUMMARY_LINE.match(line)]
    return status, sorted(lines)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- nrp purify --ray on a local cluster ---------------------------------------------------------------------


def test_ray_job_gives_the_bytes_and_report_of_nrp_purify(ray_cluster, model, photos, tmp_path, capsys):
    common = [
        str(photos),
        "--model",
        str(model),
        "--backend",
        "onnxruntime",
        "--threads",
        "1",
        "--no-progress",
    ]
    common += ["--dynamic", "--seed", str(SEED)]
    status, report = _run(["purify", *common, "-o", str(tmp_path / "local"), "--batch-size", "3"], capsys)
    assert status == 1 and report[-1] == "9 written, 0 skipped (exist), 3 failed"
    expected = _outputs(tmp_path / "local")
    assert len(expected) == 9
    for actors, batch in (("1", "2"), ("2", "4")):
        out = tmp_path / f"ray{actors}"
        argv = ["purify", *common, "-o", str(out), "--batch-size", batch, "--ray", "--actors", actors]
        ray_status, ray_report = _run(argv, capsys)
        assert (ray_status, ray_report) == (status, report)
        assert _outputs(out) == expected, f"{actors} actors, batches of {batch}"

    # Run again into the same folder: nothing is replaced, every output is reported as existing.
    argv = ["purify", *common, "-o", str(tmp_path / "ray2"), "--ray", "--actors", "2"]
    assert _run(argv, capsys)[1][-1] == "0 written, 9 skipped (exist), 3 failed"
    assert _outputs(tmp_path / "ray2") == expected


class DiesOnce(BatchPurifier):
    """Kills its actor's process the first time it meets ``victim`` (a marker file records that it did)."""

    victim = "p4.png"

    def __call__(self, batch):
        marker = Path(self.settings.source).with_name("died")
        if any(Path(str(p)).name == self.victim for p in batch["path"]):
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().__call__(batch)


def test_a_killed_actor_is_retried_and_every_output_written_once(
    ray_cluster, settings, model, photos, tmp_path
):
    reference = load_purifier(model, backend="onnxruntime", threads=1)
    expected = tmp_path / "expected"
    from nrp_deploy.batch import purify_files

    purify_files([photos], expected, reference.as_batch_fn(settings.dynamic), progress=False)

    report = purify_files_on_ray(
        [photos], tmp_path / "out", settings, actors=2, batch_size=2, progress=False, actor_class=DiesOnce
    )
    assert model.with_name("died").exists(), "the actor was never killed"
    assert sorted(report.written) == sorted(set(report.written)) and len(report.written) == 9
    assert {p.name for p, _ in report.failed} == {"p3b.png", "cut.png", "text.jpg"}
    assert _outputs(tmp_path / "out") == _outputs(expected)


def test_read_images_pipeline_keys_the_noise_by_path(ray_cluster, settings, model, photos):
    """The documented use: ray.data.read_images(..., include_paths=True) -> map_batches(BatchPurifier)."""
    ray = ray_cluster
    good = [str(p) for p in sorted(photos.rglob("p?.png"))]
    images = ray.data.read_images(good, mode="RGB", include_paths=True)
    purified = images.map_batches(
        BatchPurifier,
        fn_constructor_args=(settings,),
        batch_size=4,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    ).take_all()
    reference = load_purifier(model, backend="onnxruntime", threads=1)
    assert sorted(row["path"] for row in purified) == sorted(good)
    for row in purified:
        expected = reference(
            read_image(row["path"])[None], dynamic=settings.dynamic, start_index=path_index(row["path"])
        )[0]
        assert row["error"] == "" and np.array_equal(row["image"], expected), row["path"]


# -- the actor class without Ray ------------------------------------------------------------------------------


def test_actor_decodes_paths_fails_bad_rows_alone_and_keys_noise_by_index(settings, model, photos):
    actor = BatchPurifier(settings)
    paths = [photos / "p1.png", photos / "p3b.png", photos / "p0.png", photos / "p2.png"]
    batch = {"index": np.array([7, 8, 9, 10]), "path": np.array([str(p) for p in paths], dtype=object)}
    out = actor(batch)
    assert list(out) == ["index", "path", "image", "error"]
    assert (
        out["error"][1].startswith("not an image in a supported format")
        and str(paths[1]) not in out["error"][1]
    )
    assert out["image"][1].size == 0 and [out["error"][k] for k in (0, 2, 3)] == ["", "", ""]
    for k in (0, 2, 3):
        expected = actor.purifier(read_image(paths[k])[None], dynamic=settings.dynamic, start_index=7 + k)[0]
        np.testing.assert_array_equal(out["image"][k], expected)

    encoded = BatchPurifier(settings, encode=True)(batch)
    assert "image" not in encoded and encoded["png"][1] == b""
    assert encoded["png"][0].startswith(b"\x89PNG")


def test_actor_refuses_batches_it_cannot_key_or_read(model):
    plain = BatchPurifier(PurifierSettings(str(model), backend="onnxruntime", threads=1))
    image = np.zeros((1, 16, 16, 3), np.uint8)
    assert plain({"image": image})["image"].shape == (1, 16, 16, 3)  # no noise: no key needed
    noisy = BatchPurifier(
        PurifierSettings(str(model), backend="onnxruntime", threads=1, dynamic=DynamicDefense())
    )
    with pytest.raises(InputError, match="'index' or a 'path' column"):
        noisy({"image": image})
    with pytest.raises(InputError, match="'image' or a 'path' column"):
        plain({"label": np.array([1])})
    grey = np.empty(1, dtype=object)
    grey[0] = np.zeros((16, 16), np.uint8)
    assert "expected a uint8 (H, W, 3) image" in plain({"image": grey})["error"][0]


def test_path_index_is_stable_and_32_bit():
    assert path_index("a/b.png") == path_index("a/b.png") != path_index("a/c.png")
    assert 0 <= path_index("x" * 1000) < 1 << 32


# -- errors that need no cluster ------------------------------------------------------------------------------


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendUnavailableError, match=r"nrp-deploy\[ray\]"):
        import_ray()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray", "photos"], "not a Ray address"),
        (["--actors", "2"], "add --ray or drop them"),
        (["--ray", "--server", "http://127.0.0.1:1"], "choose one"),
    ],
)
def test_ray_options_are_checked_before_anything_runs(tmp_path, capsys, extra, message):
    assert main(["purify", str(tmp_path), "-o", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
