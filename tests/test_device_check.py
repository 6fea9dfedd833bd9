"""scripts/device_check.py, the one command a GPU lease runs, checked on the CPU.

Without a GPU it must start, run its environment probe, list every GPU step as skipped with the reason,
and write its report, all fast; a step that overruns its limit or fails is recorded and the rest go on;
and the report renders real results (tables and the plot) from the files the GPU steps write.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device_check.py"
GPU_STEPS = ["install", "gpu-tests", "kernels-bench", "nrp-bench", "nrp-bench-compiled"]


def _module():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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


def test_without_a_gpu_the_reason_is_the_missing_device(tmp_path):
    from nrp_deploy.kernels import cuda_device_count

    if cuda_device_count():
        pytest.skip("a CUDA device is present here")
    summary = _module().check(tmp_path, budget=60, wheels=None, dry_run=False)
    reasons = {s["reason"] for s in summary["steps"] if s["name"] != "environment"}
    assert len(reasons) == 1 and reasons.pop().startswith("no CUDA device (")


def test_a_step_that_overruns_or_fails_is_recorded(tmp_path):
    module = _module()
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


def test_report_renders_results_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    module = _module()
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
