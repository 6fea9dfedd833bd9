"""``backend="auto"`` / ``precision="auto"`` on a CPU: the fastest candidate that passes its fidelity check,
timed once and recorded per machine; explicit choices win; BF16 arithmetic has a verdict of its own.

The timing is made deterministic where the test is about which candidate wins (``time_call`` replaced by
known costs); one test times for real and checks the record is reused. Tiny models (NRP_resG, 4 channels,
one block), so every candidate opens and runs in well under a second. BF16 arithmetic is a candidate only
where the CPU has it (AVX512-BF16, AMX; not on AVX2-only CPUs), so the known costs never let it win and the
expectations name it only where it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sidecars import write_sidecar
from test_runtime_torchfree import BLOCKER, REPO

from nrp_deploy.cli import main
from nrp_deploy.errors import BackendUnavailableError, FidelityError, InputError
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import auto, bf16_verdict, load_purifier
from nrp_deploy.runtime.machine_records import records_dir

pytest.importorskip("openvino")

IMAGE = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)


def _cpu_runs_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


#: The BF16 candidate where this CPU runs it (its timing then appears beside the others).
WITH_BF16 = {"openvino bf16"} if _cpu_runs_bf16() else set()
FP32_ONNX = {"onnxruntime fp32", "openvino fp32", *WITH_BF16}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("auto-cache")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("auto") / "tiny.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 4, "nb": 1}).build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def onnx_model(checkpoint, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auto-onnx") / "tiny.onnx"
    export_onnx(str(checkpoint), path)
    return path


@pytest.fixture(autouse=True)
def timed_auto(cache, monkeypatch):
    """The timed choice (the suite's conftest sets the preference order), in this module's cache folder
    with no machine records: each test starts from a machine that has measured nothing."""
    monkeypatch.setenv("NRP_DEPLOY_AUTO", "timed")
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(cache))
    shutil.rmtree(records_dir(), ignore_errors=True)


def fake_costs(monkeypatch, costs: dict[str, float]) -> list[str]:
    """Replace the timing with ``costs`` (ms by backend name and precision); returns the calls made."""
    calls: list[str] = []

    def timed(backend, x):
        label = f"{backend.name} {backend.precision}"
        calls.append(label)
        return costs[label]

    monkeypatch.setattr(auto, "time_call", timed)
    return calls


COSTS = {
    "onnxruntime-cpu fp32": 5.0,
    "openvino-cpu fp32": 3.0,
    "openvino-cpu-bf16 fp32": 4.0,
    "torch-cpu fp32": 40.0,
    "onnxruntime-cpu int8": 2.0,
    "openvino-cpu int8": 1.0,
}


def test_auto_opens_the_fastest_candidate(checkpoint, monkeypatch):
    fake_costs(monkeypatch, COSTS)
    with load_purifier(checkpoint) as purifier:
        choice = purifier.auto_choice
        assert purifier.backend_name == "openvino-cpu" and choice.chosen == "openvino fp32"
        assert purifier(IMAGE).shape == IMAGE.shape
    assert set(choice.timings_ms) == {*FP32_ONNX, "torch fp32"}
    assert "no CPU INT8 artifact" in choice.rejected["onnxruntime int8"]  # auto exports no INT8 itself
    if not WITH_BF16:
        assert "no BF16 path" in choice.rejected["openvino bf16"]
    assert choice.how == "timed" and "auto chose openvino fp32" in choice.summary()
    shutil.rmtree(records_dir())
    fake_costs(monkeypatch, {**COSTS, "onnxruntime-cpu fp32": 0.5})
    with load_purifier(checkpoint) as purifier:
        assert (
            purifier.backend_name == "onnxruntime-cpu" and purifier.auto_choice.chosen == "onnxruntime fp32"
        )


def test_a_cached_int8_artifact_competes_and_a_failed_one_is_refused(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path))  # the INT8 stays out of the other tests' cache
    with load_purifier(checkpoint, backend="onnxruntime", precision="int8") as explicit:  # caches the INT8
        int8 = explicit.backend.path
    fake_costs(monkeypatch, COSTS)
    with load_purifier(checkpoint) as purifier:
        assert purifier.auto_choice.chosen == "openvino int8" and purifier.precision == "int8"
    write_sidecar(int8, psnr_db=20.0, precision="int8", min_psnr_db=35.0, source_sha=sha256_file(checkpoint))
    with load_purifier(checkpoint) as purifier:
        rejected = purifier.auto_choice.rejected
        assert purifier.auto_choice.chosen == "openvino fp32"
    assert "failed its fidelity check" in rejected["onnxruntime int8"]
    assert "failed its fidelity check" in rejected["openvino int8"]
    # allow_failed is for the model the caller named, not for artifacts auto found itself
    with load_purifier(checkpoint, allow_failed=True) as purifier:
        assert purifier.auto_choice.chosen == "openvino fp32"


def test_an_explicit_backend_or_precision_wins(checkpoint, monkeypatch):
    fake_costs(monkeypatch, COSTS)
    with load_purifier(checkpoint, backend="onnxruntime") as purifier:  # its one candidate here: not timed
        assert purifier.backend_name == "onnxruntime-cpu" and purifier.auto_choice.how == "only"
        assert purifier.auto_choice.chosen == "onnxruntime fp32"
    for precision in ("fp32", None):  # None: the model's own, fp32 for a checkpoint; BF16 arithmetic is not
        with load_purifier(checkpoint, precision=precision) as purifier:
            assert purifier.auto_choice.chosen == "openvino fp32"
            assert set(purifier.auto_choice.timings_ms) == {"onnxruntime fp32", "openvino fp32", "torch fp32"}
    with load_purifier(checkpoint, backend="onnxruntime", precision="fp32") as purifier:
        assert purifier.auto_choice is None and purifier.backend_name == "onnxruntime-cpu"
    if WITH_BF16:  # an arithmetic in the options is explicit too (refused where the CPU has no BF16 path)
        with load_purifier(
            checkpoint, backend="openvino", options={"inference_precision": "bf16"}
        ) as purifier:
            assert purifier.auto_choice is None and purifier.backend_name == "openvino-cpu-bf16"


def test_a_precision_no_cpu_candidate_runs_takes_the_preference_order(onnx_model, tmp_path, monkeypatch):
    calls = fake_costs(monkeypatch, COSTS)
    fp16 = tmp_path / "fp16.onnx"  # FP32 bytes under an fp16 sidecar: what matters here is the label
    shutil.copyfile(onnx_model, fp16)
    write_sidecar(fp16, psnr_db=60.0, precision="fp16", min_psnr_db=50.0)
    with load_purifier(fp16) as purifier:
        assert purifier.auto_choice is None and purifier.backend_name == "onnxruntime-cpu"
        assert purifier.precision == "fp16"
    assert calls == []


def test_the_choice_is_timed_for_real_once_and_then_read_back(onnx_model, monkeypatch):
    with load_purifier(onnx_model, threads=1) as first:
        choice = first.auto_choice
        out = first(IMAGE)
    assert choice.how == "timed" and set(choice.timings_ms) == FP32_ONNX
    assert all(ms > 0 for ms in choice.timings_ms.values())
    assert min(choice.timings_ms, key=choice.timings_ms.get) == choice.chosen
    calls = fake_costs(monkeypatch, {})  # any timing now would fail: the record must be used
    with load_purifier(onnx_model, threads=1) as second:
        assert second.auto_choice.how == "cached" and second.auto_choice.chosen == choice.chosen
        assert second.auto_choice.timings_ms == choice.timings_ms
        assert np.abs(second(IMAGE).astype(int) - out).max() == 0
    assert calls == []


def _record(onnx_model: Path) -> Path:
    (record,) = records_dir().glob(f"auto-{sha256_file(onnx_model)[:16]}-*.json")
    return record


def test_a_stale_or_corrupt_record_is_timed_again_and_rewritten(onnx_model, monkeypatch):
    calls = fake_costs(monkeypatch, COSTS)
    load_purifier(onnx_model).close()
    runs = len(calls)  # one timing's calls: the same costs give the same rounds every time
    assert runs >= len(FP32_ONNX)
    record = _record(onnx_model)
    data = json.loads(record.read_text())
    data["key"]["machine"]["features"] = ["avx2"]  # recorded on another CPU
    record.write_text(json.dumps(data))
    with load_purifier(onnx_model) as purifier:
        assert purifier.auto_choice.how == "timed"
    assert len(calls) == 2 * runs and json.loads(record.read_text())["key"]["machine"]["features"] != ["avx2"]
    record.write_text('{"format": 1, "key": ')  # truncated
    with load_purifier(onnx_model) as purifier:
        assert purifier.auto_choice.how == "timed"
    assert len(calls) == 3 * runs and json.loads(record.read_text())["value"]["chosen"] == "openvino fp32"
    with load_purifier(onnx_model) as purifier:
        assert purifier.auto_choice.how == "cached"
    assert len(calls) == 3 * runs


def test_bf16_has_a_verdict_measured_once_and_a_failed_one_is_refused(onnx_model, monkeypatch):
    options = {"inference_precision": "bf16"}
    if not WITH_BF16:  # refused before anything is measured or recorded
        with pytest.raises(BackendUnavailableError, match="no BF16 path"):
            load_purifier(onnx_model, backend="openvino", options=options)
        assert not list(records_dir().glob("bf16-verdict-*.json"))
        return
    with load_purifier(onnx_model, backend="openvino", options=options) as purifier:
        assert purifier.backend_name == "openvino-cpu-bf16"
    (record,) = records_dir().glob("bf16-verdict-*.json")
    verdict = json.loads(record.read_text())["value"]
    assert verdict["passed"] and verdict["line"].startswith("PASS bf16") and verdict["psnr_db"] >= 40.0

    def measured_again(*args):
        raise AssertionError("the recorded BF16 verdict was measured again")

    measure = bf16_verdict._outputs
    monkeypatch.setattr(bf16_verdict, "_outputs", measured_again)
    load_purifier(onnx_model, backend="openvino", options=options).close()
    monkeypatch.setattr(bf16_verdict, "_outputs", measure)
    shutil.rmtree(records_dir())
    monkeypatch.setattr(bf16_verdict, "MIN_PSNR_DB", 500.0)  # no BF16 run reaches it
    with pytest.raises(FidelityError, match=r"FAIL bf16.*Run it with FP32 arithmetic"):
        load_purifier(onnx_model, backend="openvino", options=options)
    with load_purifier(onnx_model, backend="openvino", options=options, allow_failed=True) as purifier:
        assert purifier.backend_name == "openvino-cpu-bf16"
    fake_costs(monkeypatch, COSTS)
    with load_purifier(onnx_model) as purifier:
        assert purifier.auto_choice.chosen == "openvino fp32"
        assert "FAIL bf16" in purifier.auto_choice.rejected["openvino bf16"]


def test_the_preference_order_skips_the_timing(checkpoint, monkeypatch):
    calls = fake_costs(monkeypatch, COSTS)
    monkeypatch.setenv("NRP_DEPLOY_AUTO", "order")
    with load_purifier(checkpoint) as purifier:
        assert purifier.auto_choice is None and purifier.backend_name == "onnxruntime-cpu"
        assert purifier.precision == "fp32"
    assert calls == []
    monkeypatch.setenv("NRP_DEPLOY_AUTO", "fastest")
    with pytest.raises(InputError, match="NRP_DEPLOY_AUTO must be one of timed, order"):
        load_purifier(checkpoint)


def test_nrp_info_says_what_auto_chose_and_why(onnx_model, monkeypatch, capsys):
    fake_costs(monkeypatch, COSTS)
    assert main(["info"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("auto")]
    assert main(["info", "--model", str(onnx_model)]) == 0
    out = capsys.readouterr().out
    assert "auto chose openvino fp32: fastest at 224x224, batch 1" in out
    assert "onnxruntime fp32 5.0 ms (1.7x)" in out
    assert main(["info", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["auto_choices"]
    assert entry["chosen"] == "openvino fp32" and entry["current"] and entry["precision"] == "auto"


CHILD = """
import json, sys
from nrp_deploy.runtime import load_purifier

purifier = load_purifier(sys.argv[1], threads=1)
again = load_purifier(sys.argv[1], threads=1)
print(json.dumps({
    "first": purifier.auto_choice.to_dict(),
    "second": again.auto_choice.how,
    "torch_imported": any(m == "torch" or m.startswith("torch.") for m in sys.modules),
}))
"""


def test_auto_without_torch_picks_among_what_the_fp32_onnx_gives(onnx_model, tmp_path):
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(REPO)])}
    env.update(NRP_DEPLOY_CACHE=str(tmp_path / "cache"), NRP_DEPLOY_AUTO="timed")
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(onnx_model)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert not result["torch_imported"] and result["second"] == "cached"
    assert set(result["first"]["timings_ms"]) == FP32_ONNX


class _Fixed:
    """A stand-in backend whose timing is given (what is tested is how rounds are run, not an engine)."""

    def __init__(self, name: str) -> None:
        self.name, self.precision = name, "fp32"

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x


def test_candidates_are_timed_in_interleaved_rounds_and_a_slow_one_leaves_early(monkeypatch):
    costs = {"a": 1.0, "b": 1.5, "c": 10.0}
    order: list[str] = []

    def timed(backend, x):
        order.append(backend.name)
        return costs[backend.name]

    monkeypatch.setattr(auto, "time_call", timed)
    rejected: dict[str, str] = {}
    runs = auto._timed_rounds(
        {name: _Fixed(name) for name in costs}, np.zeros((1, 3, 4, 4), np.float32), rejected
    )
    assert runs == {"a": [1.0] * auto.TIMED_RUNS, "b": [1.5] * auto.TIMED_RUNS, "c": [10.0]}
    assert order == ["a", "b", "c", "b", "a", "a", "b"] and not rejected  # each round starts one further on
