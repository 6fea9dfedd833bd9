"""The TensorRT logic that needs no TensorRT: profiles, engine metadata, staleness, the engine cache."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from nrp_deploy.artifacts import metadata, specs
from nrp_deploy.errors import InputError, MetadataError, ModelNotFoundError, StaleArtifactError
from nrp_deploy.fileutil import sha256_file, write_bytes_atomic
from nrp_deploy.tensorrt import cache as trt_cache
from nrp_deploy.tensorrt import engine as trt_engine

ENV = trt_engine.TargetEnvironment("10.3.0", "Orin", (8, 7), "Linux-aarch64")


# -- profiles ------------------------------------------------------------------------------------------


def test_parse_bhw():
    assert specs.parse_bhw("8x224x224") == (8, 224, 224)
    assert specs.parse_bhw(" 1X32x48 ") == (1, 32, 48)
    for bad in ("224x224", "1x0x4", "ax2x3", "1x2x3x4", ""):
        with pytest.raises(InputError, match=r"BATCHxHEIGHTxWIDTH|positive"):
            specs.parse_bhw(bad)


def test_default_profile_serves_224_directly_and_tiles_larger_images():
    profile = specs.DEFAULT_PROFILE
    assert profile.opt == (1, 224, 224)
    assert specs.outside_profile(profile, 1, 224, 224) is None
    assert specs.outside_profile(profile, 8, 224, 224) is None
    assert specs.outside_profile(profile, 1, 448, 300) is None
    assert "outside the engine's profile" in specs.outside_profile(profile, 1, 449, 224)
    assert "batch 1..8" in specs.outside_profile(profile, 9, 224, 224)
    assert specs.outside_profile(profile, 1, 16, 224) is not None  # below min: the Purifier pads


def test_make_profile_fills_defaults_and_names_the_broken_axis():
    p = specs.make_profile(max_shape=(4, 512, 512))
    assert (p.min, p.opt, p.max) == (specs.DEFAULT_PROFILE.min, specs.DEFAULT_PROFILE.opt, (4, 512, 512))
    with pytest.raises(InputError, match="width must satisfy min <= opt <= max"):
        specs.make_profile((1, 32, 32), (1, 224, 224), (8, 448, 200))
    with pytest.raises(InputError, match="batch"):
        specs.make_profile(opt_shape=(16, 224, 224))
    with pytest.raises(InputError, match="three positive numbers"):
        specs.make_profile(min_shape=(1, 32))
    assert specs.profile_from_dict(specs.profile_to_dict(p)) == p


def test_build_options_are_validated():
    with pytest.raises(InputError, match="optimisation level"):
        trt_engine.BuildOptions(optimization_level=6)
    with pytest.raises(InputError, match="workspace"):
        trt_engine.BuildOptions(workspace_mib=0)
    with pytest.raises(InputError, match="hardware compatibility"):
        trt_engine.BuildOptions(hardware_compatibility="turing_plus")


# -- metadata and staleness ----------------------------------------------------------------------------


def _metadata(
    engine: Path, onnx: Path, env: trt_engine.TargetEnvironment = ENV, **changes
) -> trt_engine.EngineMetadata:
    meta = trt_engine.EngineMetadata(
        engine_sha256=sha256_file(engine),
        onnx_path=str(onnx),
        onnx_sha256=sha256_file(onnx),
        precision="fp16",
        profile=specs.profile_to_dict(specs.DEFAULT_PROFILE),
        input_name="input",
        input_dtype="float32",
        output_name="output",
        output_dtype="float32",
        tensorrt_version=env.tensorrt_version,
        gpu_name=env.gpu_name,
        compute_capability=list(env.compute_capability),
        platform=env.platform,
        optimization_level=3,
        workspace_mib=1024,
        tf32=False,
        build_seconds=12.5,
        built_at="2026-01-01T00:00:00+00:00",
        source={"onnx_precision": "fp16"},
    )
    return dataclasses.replace(meta, **changes)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx-bytes")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine-bytes")
    return onnx, engine


def test_metadata_round_trip(files):
    onnx, engine = files
    meta = _metadata(engine, onnx)
    path = trt_engine.write_engine_metadata(engine, meta)
    assert path == Path(str(engine) + ".json")
    assert trt_engine.read_engine_metadata(engine) == meta
    data = json.loads(path.read_text())
    for key in ("onnx_sha256", "precision", "profile", "tensorrt_version", "gpu_name", "compute_capability"):
        assert key in data
    assert data["build_seconds"] == 12.5 and data["built_at"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no metadata file"),
        ("{not json", "not readable JSON"),
        ('{"format": "something-else"}', "not TensorRT engine metadata"),
        (json.dumps({"format": trt_engine.FORMAT, "format_version": 99}), "format version 99"),
        (json.dumps({"format": trt_engine.FORMAT, "format_version": trt_engine.FORMAT_VERSION}), "malformed"),
    ],
)
def test_unreadable_metadata_is_named(files, content, message):
    engine = files[1]
    if content is not None:
        metadata.sidecar_path(engine).write_text(content)
    with pytest.raises(MetadataError, match=message):
        trt_engine.read_engine_metadata(engine)


def test_fresh_engine_has_no_stale_reasons(files):
    onnx, engine = files
    meta = _metadata(engine, onnx)
    assert (
        trt_engine.stale_reasons(meta, ENV, onnx_sha256=sha256_file(onnx), engine_sha256=sha256_file(engine))
        == []
    )


@pytest.mark.parametrize(
    ("env", "changes", "reason"),
    [
        (
            dataclasses.replace(ENV, tensorrt_version="10.3.1"),
            {},
            r"built by TensorRT 10\.3\.0; this is TensorRT 10\.3\.1",
        ),
        (dataclasses.replace(ENV, compute_capability=(8, 6), gpu_name="RTX A6000"), {}, "sm_87.*RTX A6000"),
        # one compute capability, another model: TensorRT's plans are tuned per model
        (dataclasses.replace(ENV, gpu_name="Orin NX"), {}, r"built for Orin \(sm_87\); this GPU is Orin NX"),
        (dataclasses.replace(ENV, platform="Linux-x86_64"), {}, "built on Linux-aarch64"),
        # version-compatible engines run on later releases of the same major only
        (
            dataclasses.replace(ENV, tensorrt_version="10.2.0"),
            {"version_compatible": True},
            r"from 10\.3\.0 on",
        ),
        (
            dataclasses.replace(ENV, tensorrt_version="11.0.0"),
            {"version_compatible": True},
            r"TensorRT 10\.x",
        ),
        # hardware-compatible engines run on Ampere and later only
        (
            dataclasses.replace(ENV, compute_capability=(7, 5)),
            {"hardware_compatibility": "ampere_plus"},
            "sm_80",
        ),
    ],
)
def test_stale_reasons_name_what_differs(files, env, changes, reason):
    onnx, engine = files
    reasons = trt_engine.stale_reasons(_metadata(engine, onnx, **changes), env)
    assert len(reasons) == 1
    assert re.search(reason, reasons[0])


def test_engines_without_a_recorded_tf32_policy_or_with_tf32_in_fp32_are_stale(files):
    onnx, engine = files
    unrecorded = trt_engine.stale_reasons(_metadata(engine, onnx, tf32=None, format_version=1), ENV)
    assert len(unrecorded) == 1 and re.search("format version 1.*TF32", unrecorded[0])
    fp32_tf32 = trt_engine.stale_reasons(_metadata(engine, onnx, precision="fp32", tf32=True), ENV)
    assert len(fp32_tf32) == 1 and "FP32 engine built with TF32 allowed" in fp32_tf32[0]
    assert trt_engine.stale_reasons(_metadata(engine, onnx, precision="fp16", tf32=True), ENV) == []


def _write_format_1_sidecar(engine: Path, onnx: Path) -> None:
    """A sidecar as nrp-deploy wrote it before it recorded the TF32 policy (format version 1)."""
    data = _metadata(engine, onnx, precision="fp32").to_dict()
    del data["tf32"]
    data["format_version"] = 1
    metadata.sidecar_path(engine).write_text(json.dumps(data))


def test_format_1_engines_are_rebuilt_from_their_recorded_onnx_or_refused(files, tmp_path):
    """Engines from before the TF32 fix may run FP32 in TF32: an explicit engine path is rebuilt from the
    ONNX its sidecar names, keeping its options, and refused with the reason when that ONNX is gone."""
    onnx = files[0]
    engine = tmp_path / "deploy.engine"
    engine.write_bytes(b"old plan")
    _write_format_1_sidecar(engine, onnx)
    assert trt_engine.read_engine_metadata(engine).tf32 is None
    build = FakeBuilder()
    choice = trt_cache.ensure_engine(env=ENV, build=build, engine=engine)
    assert choice.built and "format version 1" in choice.reasons[0]
    assert [call[:2] for call in build.calls] == [(onnx, engine)]
    rebuilt = trt_engine.read_engine_metadata(engine)
    assert rebuilt.format_version == trt_engine.FORMAT_VERSION and rebuilt.tf32 is False

    engine.write_bytes(b"old plan")
    _write_format_1_sidecar(engine, onnx)
    onnx.unlink()
    with pytest.raises(StaleArtifactError, match=r"format version 1.*TF32"):
        trt_cache.ensure_engine(env=ENV, build=FakeBuilder(), engine=engine)


def test_compatibility_flags_widen_what_runs(files):
    onnx, engine = files
    newer = dataclasses.replace(ENV, tensorrt_version="10.16.1")
    assert trt_engine.stale_reasons(_metadata(engine, onnx, version_compatible=True), newer) == []
    hopper = dataclasses.replace(ENV, compute_capability=(9, 0), gpu_name="H100")
    assert (
        trt_engine.stale_reasons(_metadata(engine, onnx, hardware_compatibility="ampere_plus"), hopper) == []
    )


def test_changed_onnx_and_replaced_engine_are_stale(files):
    onnx, engine = files
    meta = _metadata(engine, onnx)
    onnx.write_bytes(b"other onnx")
    engine.write_bytes(b"garbage")
    reasons = trt_engine.stale_reasons(
        meta, ENV, onnx_sha256=sha256_file(onnx), engine_sha256=sha256_file(engine)
    )
    assert any("ONNX" in r and "changed" in r for r in reasons)
    assert any("replaced or corrupted" in r for r in reasons)


def test_cache_key_tracks_what_the_engine_depends_on():
    base = trt_cache.cache_key("a" * 64, trt_engine.BuildOptions(), ENV)
    assert base == trt_cache.cache_key("a" * 64, trt_engine.BuildOptions(), ENV)
    variants = [
        # another GPU model of the same compute capability: its own engine (TensorRT's plans are per model)
        trt_cache.cache_key(
            "a" * 64, trt_engine.BuildOptions(), dataclasses.replace(ENV, gpu_name="Orin NX")
        ),
        trt_cache.cache_key("b" * 64, trt_engine.BuildOptions(), ENV),
        trt_cache.cache_key("a" * 64, trt_engine.BuildOptions(optimization_level=5), ENV),
        trt_cache.cache_key(
            "a" * 64, trt_engine.BuildOptions(profile=specs.make_profile(max_shape=(4, 448, 448))), ENV
        ),
        trt_cache.cache_key("a" * 64, trt_engine.BuildOptions(version_compatible=True), ENV),
        trt_cache.cache_key(
            "a" * 64, trt_engine.BuildOptions(), dataclasses.replace(ENV, tensorrt_version="11.4.0.106")
        ),
        trt_cache.cache_key(
            "a" * 64, trt_engine.BuildOptions(), dataclasses.replace(ENV, compute_capability=(9, 0))
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_timing_cache_is_per_release_and_gpu_kind(tmp_path):
    a = trt_cache.timing_cache_path(ENV, tmp_path)
    assert a.parent == tmp_path
    assert a != trt_cache.timing_cache_path(dataclasses.replace(ENV, tensorrt_version="11.4.0.106"), tmp_path)
    assert a != trt_cache.timing_cache_path(dataclasses.replace(ENV, compute_capability=(9, 0)), tmp_path)
    h100, h200 = (
        dataclasses.replace(ENV, gpu_name=name) for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200")
    )
    assert trt_cache.timing_cache_path(h100, tmp_path) != trt_cache.timing_cache_path(h200, tmp_path)
    assert "NVIDIA-H200" in trt_cache.timing_cache_path(h200, tmp_path).name


# -- ensure_engine: the cache policy -------------------------------------------------------------------


class FakeBuilder:
    """Stands in for ``tensorrt.builder.build_engine``: writes an engine and its sidecar, counts builds."""

    def __init__(self, env: trt_engine.TargetEnvironment = ENV) -> None:
        self.env = env
        self.calls: list[tuple[Path, Path, trt_engine.BuildOptions]] = []

    def __call__(
        self, onnx: Path, engine: Path, options: trt_engine.BuildOptions
    ) -> trt_engine.EngineMetadata:
        self.calls.append((onnx, engine, options))
        write_bytes_atomic(engine, b"engine for " + onnx.read_bytes() + f" #{len(self.calls)}".encode())
        meta = _metadata(engine, onnx, self.env, profile=specs.profile_to_dict(options.profile))
        trt_engine.write_engine_metadata(engine, meta)
        return meta


def test_onnx_source_builds_once_then_reuses(files, tmp_path):
    onnx = files[0]
    build = FakeBuilder()
    first = trt_cache.ensure_engine(env=ENV, build=build, onnx=onnx, directory=tmp_path / "cache")
    assert first.built and first.reasons == ("no engine yet",)
    assert first.path.parent == tmp_path / "cache" and first.path.suffix == ".engine"
    second = trt_cache.ensure_engine(env=ENV, build=build, onnx=onnx, directory=tmp_path / "cache")
    assert not second.built and second.path == first.path
    assert len(build.calls) == 1
    # a changed ONNX has another key: a new engine beside the old one
    onnx.write_bytes(b"retrained")
    third = trt_cache.ensure_engine(env=ENV, build=build, onnx=onnx, directory=tmp_path / "cache")
    assert third.built and third.path != first.path and len(build.calls) == 2


def test_stale_engine_is_rebuilt_in_place_keeping_its_options(files, tmp_path):
    onnx = files[0]
    engine = tmp_path / "deploy.engine"
    custom = trt_engine.BuildOptions(profile=specs.make_profile((1, 64, 64), (2, 256, 256), (4, 512, 512)))
    FakeBuilder()(onnx, engine, custom)
    upgraded = dataclasses.replace(ENV, tensorrt_version="10.4.0")
    build = FakeBuilder(upgraded)
    choice = trt_cache.ensure_engine(env=upgraded, build=build, engine=engine)
    assert choice.built and choice.path == engine
    assert "built by TensorRT 10.3.0; this is TensorRT 10.4.0" in choice.reasons[0]
    assert build.calls == [(onnx, engine, dataclasses.replace(custom, workspace_mib=1024))]
    assert trt_engine.read_engine_metadata(engine).tensorrt_version == "10.4.0"
    assert not trt_cache.ensure_engine(env=upgraded, build=build, engine=engine).built


def test_stale_engine_without_its_onnx_is_refused_with_the_reasons(files, tmp_path):
    onnx = files[0]
    engine = tmp_path / "deploy.engine"
    FakeBuilder()(onnx, engine, trt_engine.BuildOptions())
    onnx.unlink()
    other_gpu = dataclasses.replace(ENV, gpu_name="H100", compute_capability=(9, 0), platform="Linux-x86_64")
    with pytest.raises(StaleArtifactError) as info:
        trt_cache.ensure_engine(env=other_gpu, build=FakeBuilder(), engine=engine)
    message = str(info.value)
    assert "built for Orin (sm_87); this GPU is H100 (sm_90)" in message
    assert "nrp build" in message


def test_corrupt_engine_is_rebuilt_from_onnx_or_refused(files, tmp_path):
    onnx = files[0]
    engine = tmp_path / "deploy.engine"
    FakeBuilder()(onnx, engine, trt_engine.BuildOptions())
    engine.write_bytes(b"\0" * 10)  # truncated / overwritten after the build
    build = FakeBuilder()
    choice = trt_cache.ensure_engine(env=ENV, build=build, onnx=onnx, engine=engine)
    assert choice.built and "replaced or corrupted" in choice.reasons[0]
    engine.write_bytes(b"\0" * 10)
    onnx.unlink()
    with pytest.raises(StaleArtifactError, match="replaced or corrupted"):
        trt_cache.ensure_engine(env=ENV, build=build, engine=engine)


def test_engine_with_another_onnx_is_rebuilt(files, tmp_path):
    onnx = files[0]
    engine = tmp_path / "deploy.engine"
    FakeBuilder()(onnx, engine, trt_engine.BuildOptions())
    onnx.write_bytes(b"fine-tuned")
    choice = trt_cache.ensure_engine(env=ENV, build=FakeBuilder(), onnx=onnx, engine=engine)
    assert choice.built and "(it changed)" in choice.reasons[0]


def test_engine_without_metadata_is_unverifiable(files, tmp_path):
    engine = files[1]
    with pytest.raises(StaleArtifactError, match="no metadata file"):
        trt_cache.ensure_engine(env=ENV, build=FakeBuilder(), engine=engine)
    choice = trt_cache.ensure_engine(env=ENV, build=FakeBuilder(), onnx=files[0], engine=engine)
    assert choice.built and "no metadata file" in choice.reasons[0]


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        trt_cache.ensure_engine(env=ENV, build=FakeBuilder(), engine=tmp_path / "none.engine")
    with pytest.raises(ModelNotFoundError, match="ONNX model"):
        trt_cache.ensure_engine(env=ENV, build=FakeBuilder(), onnx=tmp_path / "none.onnx")
    with pytest.raises(InputError, match="needs an ONNX model, an engine, or both"):
        trt_cache.ensure_engine(env=ENV, build=FakeBuilder())
