"""scripts/device_check.py, the one command a GPU lease runs, checked on the CPU.

Without a GPU it must start, run its environment probe, list every GPU step as skipped with the reason,
and write its report, all fast; a step that overruns its limit or fails is recorded and the rest go on;
and the report renders real results (tables and the plot) from the files the GPU steps write.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device_check.py"
GPU_STEPS = ["install", "gpu-tests", "kernels-bench", "nrp-bench", "nrp-bench-compiled"]


def test_dry_run_names_every_step_and_why_it_skipped(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["environment", *GPU_STEPS]
    assert steps["environment"]["status"] == "ok" and summary["machine"]["python"]
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"] == "dry run (--dry-run)"
        assert steps[name]["command"]
        assert f"| {name} | skipped |" in (tmp_path / "summary.md").read_text()
        assert name in done.stdout
    assert summary["dry_run"] and not (tmp_path / "summary.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_check.log", "summary.json", "summary.md"]


def test_without_a_gpu_the_reason_is_the_missing_device(tmp_path, load_script):
    from nrp_deploy.kernels import cuda_device_count

    if cuda_device_count():
        pytest.skip("a CUDA device is present here")
    summary = load_script("device_check").check(tmp_path, budget=60, wheels=None, dry_run=False)
    reasons = {s["reason"] for s in summary["steps"] if s["name"] != "environment"}
    assert len(reasons) == 1 and reasons.pop().startswith("no CUDA device (")


def test_a_step_that_overruns_or_fails_is_recorded(tmp_path, load_script):
    module = load_script("device_check")
    env = module._env(None)
    with open(tmp_path / "log", "w") as log:
        slow = module.Step(
            "slow", 1, [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"]
        )
        module.run_step(slow, 1, env, log)
        failing = module.Step("failing", 10, [sys.executable, "-c", "raise SystemExit(3)"])
        module.run_step(failing, 10, env, log)
    assert slow.status == "timeout" and slow.seconds < 10 and "started" in slow.tail
    assert failing.status == "failed" and failing.returncode == 3 and failing.reason == "exit status 3"


def test_report_renders_results_and_plot(tmp_path, load_script):
    pytest.importorskip("matplotlib")
    module = load_script("device_check")
    kernels = [
        {"op": op, "batch": b, "fused_us": 10.0 * b, "unfused_us": 60.0 * b, "speedup": 6.0, "fused_gbps": 2500,
         "copy_share": 0.8}
        for op in ("pre+noise", "post")
        for b in (1, 8, 64)
    ]  # fmt: skip
    (tmp_path / "kernels_bench.json").write_text(json.dumps({"results": kernels}))
    cases = [
        {"model": "NRP_resG", "resolution": 224, "batch": b, "scenario": "e2e-dynamic",
         "results": [
             {"backend": "torch-fp32", "status": "ok", "latency_ms": {"median_ms": 3.0 * b},
              "speedup_vs_baseline": {"paired_median": 1.0}},
             {"backend": "fused-torch-fp16-cl", "status": "ok", "latency_ms": {"median_ms": 1.0 * b},
              "speedup_vs_baseline": {"paired_median": 3.0}},
             {"backend": "tensorrt-fp16", "status": "failed", "reason": "no TensorRT"},
         ]}
        for b in (1, 8)
    ]  # fmt: skip
    (tmp_path / "_bench").mkdir()
    (tmp_path / "_bench" / "bench.json").write_text(json.dumps({"cases": cases}))
    summary = {"date": "now", "dry_run": False, "budget_s": 470, "seconds": 300, "machine": {}, "steps": []}
    module._collect_results(tmp_path, summary)
    assert (tmp_path / "bench.json").is_file() and not (tmp_path / "_bench").exists()
    markdown = module.render_markdown(summary)
    assert "| NRP_resG | 8 | e2e-dynamic | fused-torch-fp16-cl | 8.00 | 3.00x |" in markdown
    assert "| pre+noise | 64 | 640.0 | 3840.0 | 6.0x | 2500 | 80 |" in markdown
    assert "| tensorrt-fp16 | failed | - |" in markdown
    module._plot(tmp_path, summary)
    assert (tmp_path / "summary.png").stat().st_size > 10_000


COLLECTION_ERROR_OUTPUT = """
........s....                                                            [100%]
==================================== ERRORS ====================================
___________________ ERROR collecting tests/test_attacks_features.py ___________________
=========================== short test summary info ============================
ERROR tests/test_attacks_features.py - ModuleNotFoundError: No module named 'efficientnet_lite_pytorch'
12 passed, 1 skipped, 1 error in 31.20s
"""


def test_collection_errors_are_reported_apart_from_test_failures(load_script):
    """A test file that cannot be collected (a missing optional package) is listed; it does not make a
    step fail whose every collected test passed, and failures still fail it."""
    module = load_script("device_check")
    passed = module.Step("gpu-tests", 10, ["pytest"], status="failed", returncode=1)
    module.judge_tests(passed, COLLECTION_ERROR_OUTPUT)
    assert passed.status == "ok" and "1 test file(s) could not be collected" in passed.reason
    assert passed.collection_errors == [
        "tests/test_attacks_features.py: ModuleNotFoundError: No module named 'efficientnet_lite_pytorch'"
    ]
    failed = module.Step("gpu-tests", 10, ["pytest"], status="failed", returncode=1)
    output = COLLECTION_ERROR_OUTPUT.replace(
        "ERROR tests/", "FAILED tests/test_x.py::test_y - boom\nERROR tests/"
    )
    module.judge_tests(failed, output)
    assert failed.status == "failed" and failed.reason.startswith("1 test(s) failed or errored")
    summary = {"date": "now", "dry_run": False, "budget_s": 470, "seconds": 1, "machine": {}, "kernels": [],
               "bench": [], "steps": [passed.record()]}  # fmt: skip
    markdown = module.render_markdown(summary)
    assert "## gpu-tests: test files that could not be collected" in markdown
    assert "- tests/test_attacks_features.py: ModuleNotFoundError" in markdown


def test_partial_bench_results_and_backends_that_could_not_run_reach_the_summary(tmp_path, load_script):
    module = load_script("device_check")
    doc = {
        "models": [{"name": "NRP_resG", "backends": [
            {"backend": "torch-fp32", "status": "ok"},
            {"backend": "onnxruntime-cuda-fp16", "status": "skipped",
             "reason": "this ONNX Runtime build has no CUDA execution provider"},
            {"backend": "tensorrt-fp16", "status": "skipped", "reason": "TensorRT is not available"},
        ]}],
        "cases": [{"model": "NRP_resG", "resolution": 224, "batch": 1, "scenario": "model", "results": [
            {"backend": "torch-fp32", "status": "ok", "latency_ms": {"median_ms": 2.5},
             "speedup_vs_baseline": {"paired_median": 1.0}}]}],
    }  # fmt: skip
    (tmp_path / "_compiled").mkdir()
    (tmp_path / "_compiled" / "bench.partial.json").write_text(json.dumps(doc))
    summary = {"date": "now", "dry_run": False, "budget_s": 470, "seconds": 300, "machine": {}, "steps": []}
    module._collect_results(tmp_path, summary)
    assert json.loads((tmp_path / "bench_compiled.json").read_text())["partial"] is True
    assert summary["partial_bench"] == ["bench_compiled.json"] and len(summary["bench"]) == 1
    markdown = module.render_markdown(summary)
    assert "## Bench backends that could not run" in markdown
    assert "- NRP_resG / tensorrt-fp16 (skipped): TensorRT is not available" in markdown
    assert (
        "onnxruntime-cuda-fp16 (skipped): this ONNX Runtime build has no CUDA execution provider" in markdown
    )
    assert "Partial results (the run was stopped at its limit): bench_compiled.json." in markdown
