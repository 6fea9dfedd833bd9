"""The benchmark harness end to end on tiny purifiers: interleaving, the result schema, fidelity, skip and
failure reasons, random weights for absent registry files, the JSON / Markdown / PNG report and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nrp_deploy.bench import harness, report
from nrp_deploy.bench.catalogue import BASELINE
from nrp_deploy.bench.runner import Runner
from nrp_deploy.cli import main
from nrp_deploy.cpu_features import host_isa
from nrp_deploy.errors import InputError
from nrp_deploy.models.registry import MODELS_DIR_ENV
from nrp_deploy.models.spec import ModelSpec

TINY = {"nf": 8, "nb": 1}
FAST = {"resolutions": (16,), "warmup": 1, "rounds": 2, "measure_peak": False}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_resg.pth"
    torch.save(ModelSpec("NRP_resG", TINY).build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def torch_doc(checkpoint):
    torch.set_num_threads(1)
    config = harness.BenchConfig(
        models=(str(checkpoint),),
        backends=("torch-fp32", "torch-fp32-cl", "torch-fp16-cl", "tensorrt-fp16"),
        batch_sizes=(1, 2),
        device="cpu",
        **FAST,
    )
    return harness.run_benchmark(config, progress=None)


def _case(doc, batch, scenario):
    (case,) = [c for c in doc["cases"] if c["batch"] == batch and c["scenario"] == scenario]
    return {r["backend"]: r for r in case["results"]}


def test_result_schema_and_statistics(torch_doc):
    assert torch_doc["schema"] == harness.SCHEMA
    assert torch_doc["device"] == "cpu"
    assert torch_doc["peak"]["method"].startswith("estimate")
    assert torch_doc["machine"]["cpu"]["usable_cpus"] >= 1
    assert {(c["batch"], c["scenario"]) for c in torch_doc["cases"]} == {
        (b, s) for b in (1, 2) for s in harness.SCENARIOS
    }
    (model,) = torch_doc["models"]
    assert model["random_weights"] is False
    assert model["macs_per_pixel"] == ModelSpec("NRP_resG", TINY).macs_per_pixel
    for case in torch_doc["cases"]:
        assert case["flops_per_image"] == 2 * model["macs_per_pixel"] * 16 * 16
        for result in case["results"]:
            assert result["status"] == "ok", result
            assert len(result["samples_ms"]) == 2 and all(len(r) == 1 for r in result["samples_ms"])
            lat = result["latency_ms"]
            assert lat["n"] == 2 and 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p99_ms"] <= lat["max_ms"]
            assert result["throughput_ips"] == pytest.approx(case["batch"] * 1000 / lat["median_ms"])
            assert result["host_peak_rss_mib"] > 0
            peak = torch_doc["peak"]["per_precision"]["fp32"]  # the estimate: no matmul measured here
            assert result["peak_fraction"] == pytest.approx(result["achieved_tflops"] * 1e12 / peak)
            assert result["peak_basis"].startswith("fp32: ") and result["peak_exceeded"] is False
    json.dumps(torch_doc, allow_nan=False)  # strict JSON: no NaN or infinity anywhere


def test_baseline_speedup_is_one_and_fidelity_compares_with_it(torch_doc):
    model_only = _case(torch_doc, 1, "model")
    assert model_only[BASELINE]["speedup_vs_baseline"]["paired_median"] == pytest.approx(1.0)
    assert model_only[BASELINE]["fidelity"]["identical"] is True
    # channels_last changes only the summation order: tiny float differences, far above 80 dB
    cl = model_only["torch-fp32-cl"]["fidelity"]
    assert cl["identical"] or cl["psnr_db"] > 80
    assert cl["max_abs_err"] < 1e-4
    e2e = _case(torch_doc, 2, "e2e")["torch-fp32-cl"]["fidelity"]
    assert e2e["identical"] or e2e["max_abs_err"] <= 1  # at most one uint8 level from rounding
    dynamic = _case(torch_doc, 1, "e2e-dynamic")["torch-fp32-cl"]["fidelity"]
    assert dynamic["psnr_db"] is None and "noise" in dynamic["note"]


def test_unavailable_backends_are_reported_with_reasons(torch_doc):
    statuses = {b["backend"]: b for b in torch_doc["models"][0]["backends"]}
    assert statuses["torch-fp32"]["status"] == "ok"
    assert statuses["torch-fp16-cl"]["status"] == "skipped"
    assert "cuda" in statuses["torch-fp16-cl"]["reason"]
    assert statuses["tensorrt-fp16"]["status"] == "skipped"
    assert "not on cpu" in statuses["tensorrt-fp16"]["reason"]
    assert set(_case(torch_doc, 1, "model")) == {"torch-fp32", "torch-fp32-cl"}


def test_markdown_json_and_png_report(torch_doc, tmp_path):
    paths = report.write_report(torch_doc, tmp_path)
    assert [p.name for p in paths] == ["bench.json", "bench.md", "latency_vs_batch.png", "speedup.png"]
    assert report.read_result(paths[0]) == json.loads(json.dumps(torch_doc))
    text = paths[1].read_text()
    assert "| backend | batch | median ms |" in text
    assert "## Summary: fastest backend per case" in text
    assert text.count("| tiny_resg | 16 |") == 6  # one summary row per (batch, scenario)
    assert "torch-fp16-cl`: skipped:" in text
    assert text.count("## tiny_resg, 16x16,") == 3
    assert f"- CPU ISA: {host_isa().headline()}" in text  # AVX2 / AVX-512 / VNNI / BF16 / AMX named
    assert "{" not in text.partition("## ")[0]  # every placeholder of the header filled in
    for png in paths[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report.console_table(torch_doc)
    assert "torch-fp32-cl" in table and "1.00x" in table


def test_absent_registry_weights_run_with_seeded_random_weights(tmp_path, monkeypatch):
    entry = {"name": "tiny", "file": "tiny.pth", "architecture": "NRP_resG", "config": TINY}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "models": [entry]}))
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    config = harness.BenchConfig(
        models=("tiny", "no-such-model"),
        backends=("torch-fp32",),
        batch_sizes=(1,),
        scenarios=("model",),
        device="cpu",
        **FAST,
    )
    doc = harness.run_benchmark(config, progress=None)
    (model,) = doc["models"]
    assert model["random_weights"] is True and "seed 0" in model["weights"]
    assert doc["skipped_models"][0]["model"] == "no-such-model"
    assert "seeded random weights" in report.to_markdown(doc)


class _FakeRunner:
    """Runners that log when they run and can be told to fail, to test the schedule without models."""

    def __init__(self, log, fail_after=None):
        self.log, self.fail_after, self.calls = log, fail_after, 0

    def make(self, name):
        def infer(x):
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise RuntimeError("device lost")
            self.log.append(name)
            return x

        return Runner(name, "fp32", "cpu", "fake", np.asarray, infer, np.asarray, lambda im, d: im)


def test_rounds_are_interleaved_and_one_failure_does_not_stop_the_others(checkpoint, monkeypatch):
    log: list[str] = []
    fakes = {
        "torch-fp32": _FakeRunner(log),
        "torch-fp32-cl": _FakeRunner(log),
        "torch-compile-fp32": _FakeRunner(log, fail_after=3),
    }
    monkeypatch.setattr(harness, "build_runner", lambda name, model, ctx: fakes[name].make(name))
    config = harness.BenchConfig(
        models=(str(checkpoint),),
        backends=tuple(fakes),
        batch_sizes=(1,),
        scenarios=("model",),
        device="cpu",
        resolutions=(16,),
        warmup=1,
        rounds=4,
        reps=1,
        measure_peak=False,
    )
    doc = harness.run_benchmark(config, progress=None)
    results = {r["backend"]: r for r in doc["cases"][0]["results"]}
    # first call + fidelity output (the two warm-up calls) each, then round-robin rounds, rotating start
    # (the failing one raises on its 4th call, in round 2, and is left out of rounds 3 and 4)
    base, cl, comp = "torch-fp32", "torch-fp32-cl", "torch-compile-fp32"
    assert log[6:] == [base, cl, comp, cl, base, base, cl, base, cl]
    assert results["torch-compile-fp32"]["status"] == "failed"
    assert "device lost" in results["torch-compile-fp32"]["reason"]
    assert results["torch-fp32-cl"]["status"] == "ok" and results["torch-fp32-cl"]["latency_ms"]["n"] == 4


def test_a_run_leaves_partial_results_as_it_goes(checkpoint, monkeypatch, tmp_path):
    """Each model's backend statuses and each timed case reach ``on_result`` when they exist, so a run
    stopped by a time limit leaves bench.partial.json; the whole report replaces it."""
    fakes = {"torch-fp32": _FakeRunner([]), "torch-fp32-cl": _FakeRunner([])}
    monkeypatch.setattr(harness, "build_runner", lambda name, model, ctx: fakes[name].make(name))
    config = harness.BenchConfig(
        models=(str(checkpoint),),
        backends=(*fakes, "tensorrt-fp16"),
        batch_sizes=(1, 2),
        scenarios=("model",),
        device="cpu",
        resolutions=(16,),
        warmup=1,
        rounds=1,
        measure_peak=False,
    )
    partials = []

    def keep(doc):
        partials.append(json.loads(json.dumps(doc)))
        report.write_partial(doc, tmp_path)

    doc = harness.run_benchmark(config, progress=None, on_result=keep)
    assert [len(p["cases"]) for p in partials] == [0, 1, 2]
    statuses = {b["backend"]: b["status"] for b in partials[0]["models"][0]["backends"]}
    assert statuses == {
        "torch-fp32": "ok",
        "torch-fp32-cl": "ok",
        "tensorrt-fp16": "failed",
    }  # no fake for it
    assert json.loads((tmp_path / "bench.partial.json").read_text())["cases"] == doc["cases"]
    report.write_report(doc, tmp_path, plots=False)
    assert (tmp_path / "bench.json").is_file() and not (tmp_path / "bench.partial.json").exists()


def test_config_validation():
    with pytest.raises(InputError, match="unknown backend"):
        harness.BenchConfig(backends=("torch-fp64",))
    with pytest.raises(InputError, match="batch_sizes"):
        harness.BenchConfig(batch_sizes=(0,))
    with pytest.raises(InputError, match="scenarios"):
        harness.BenchConfig(scenarios=("training",))
    with pytest.raises(InputError, match="rounds"):
        harness.BenchConfig(rounds=0)


def test_cli_bench_writes_report_and_renders_again(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "bench",
        "--models",
        str(checkpoint),
        "--backends",
        "torch-fp32",
        "--batch-sizes",
        "1",
        "--resolutions",
        "16",
        "--scenarios",
        "e2e",
        "--rounds",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--no-plots",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md"]
    assert "tiny_resg 16x16 e2e" in capsys.readouterr().out
    again = tmp_path / "again"
    assert main(["bench", "--render", str(out / "bench.json"), "-o", str(again)]) == 0
    assert (again / "speedup.png").is_file()
    assert main(["bench", "--backends", "nope", "-o", str(tmp_path / "x")]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_runtime_backends_on_cpu_through_load_purifier(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path / "cache"))  # never the user's artifact cache
    config = harness.BenchConfig(
        models=(str(checkpoint),),
        backends=("torch-fp32", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"),
        batch_sizes=(2,),
        scenarios=("model", "e2e"),
        device="cpu",
        threads=1,
        **FAST,
    )
    doc = harness.run_benchmark(config, progress=None)
    statuses = {b["backend"]: b["status"] for b in doc["models"][0]["backends"]}
    assert statuses == {name: "ok" for name in config.backends}
    model_only = _case(doc, 2, "model")
    fp32 = model_only["onnxruntime-cpu-fp32"]["fidelity"]
    assert fp32["identical"] or fp32["psnr_db"] > 80
    int8 = model_only["onnxruntime-cpu-int8"]
    assert int8["precision"] == "int8" and 15 < int8["fidelity"]["psnr_db"] < 80
    e2e = _case(doc, 2, "e2e")["onnxruntime-cpu-fp32"]["fidelity"]
    assert e2e["identical"] or e2e["max_abs_err"] <= 1
    # the only torch variant here is the baseline, so both speed-ups are the same measurement
    ort = model_only["onnxruntime-cpu-fp32"]
    assert ort["speedup_vs_best_torch"]["best_torch"] == "torch-fp32"
    assert ort["speedup_vs_best_torch"]["paired_median"] == pytest.approx(
        ort["speedup_vs_baseline"]["paired_median"]
    )
    assert model_only["torch-fp32"]["speedup_vs_best_torch"] is None


@pytest.mark.gpu
def test_gpu_torch_variants_use_cuda_events_and_report_device_memory(checkpoint):
    config = harness.BenchConfig(
        models=(str(checkpoint),),
        backends=("torch-fp32", "torch-fp16-cl", "onnxruntime-cuda-fp32", "tensorrt-fp16"),
        batch_sizes=(1, 2),
        scenarios=("model", "e2e-dynamic"),
        device="cuda",
        **FAST,
    )
    doc = harness.run_benchmark(config, progress=None)
    assert doc["machine"]["gpu"] is not None
    model_only = _case(doc, 2, "model")
    for name in ("torch-fp32", "torch-fp16-cl"):
        assert model_only[name]["status"] == "ok"
        assert model_only[name]["device_peak_mib"] > 0
    fp16 = model_only["torch-fp16-cl"]["fidelity"]
    assert fp16["identical"] or fp16["psnr_db"] > 35
    statuses = {b["backend"]: b for b in doc["models"][0]["backends"]}
    for name in ("onnxruntime-cuda-fp32", "tensorrt-fp16"):  # run where installed, else say why not
        assert statuses[name]["status"] == "ok" or statuses[name]["reason"]


def test_openvino_backends_match_the_baseline(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path / "cache"))
    config = harness.BenchConfig(
        models=(str(checkpoint),),
        backends=("torch-fp32", "openvino-cpu-fp32"),
        batch_sizes=(2,),
        scenarios=("model", "e2e-dynamic"),
        device="cpu",
        threads=1,
        **FAST,
    )
    doc = harness.run_benchmark(config, progress=None)
    result = _case(doc, 2, "model")["openvino-cpu-fp32"]
    assert result["status"] == "ok"
    assert result["fidelity"]["identical"] or result["fidelity"]["psnr_db"] > 80
    assert _case(doc, 2, "e2e-dynamic")["openvino-cpu-fp32"]["status"] == "ok"


def test_auto_is_timed_as_the_runtime_opens_it_and_says_what_it_picked(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NRP_DEPLOY_AUTO", "timed")
    config = harness.BenchConfig(
        models=(str(checkpoint),),
        backends=("torch-fp32", "auto"),
        batch_sizes=(1,),
        scenarios=("model",),
        device="cpu",
        threads=1,
        **FAST,
    )
    doc = harness.run_benchmark(config, progress=None)
    result = _case(doc, 1, "model")["auto"]
    assert result["status"] == "ok" and result["precision"] in ("fp32", "bf16")  # no INT8 at hand here
    (status,) = [b for b in doc["models"][0]["backends"] if b["backend"] == "auto"]
    assert status["details"]["auto_choice"].startswith("auto chose ")


class _TF32Spy(torch.nn.Module):
    """Records torch's two TF32 switches each time the wrapped module runs."""

    def __init__(self, inner: torch.nn.Module, seen: list) -> None:
        super().__init__()
        self.inner, self.seen = inner, seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.inner(x)


@pytest.mark.parametrize(("name", "tf32"), [("torch-fp32", False), ("torch-tf32", True)])
def test_fp32_baseline_is_true_fp32_and_tf32_is_its_own_target(
    checkpoint, monkeypatch, tf32_switches, name, tf32
):
    """torch lets cuDNN use TF32 by default; the FP32 baseline switches it off around its work and the
    torch-tf32 target on, and both leave the switches as they found them."""
    import types

    from nrp_deploy.bench import torch_configs
    from nrp_deploy.bench.catalogue import CATALOGUE
    from nrp_deploy.bench.runner import BenchModel, TargetContext

    seen: list[tuple[bool, bool]] = []
    load = torch_configs.load_model
    monkeypatch.setattr(
        torch_configs,
        "load_model",
        lambda path, device=None: types.SimpleNamespace(
            module=_TF32Spy(load(path, device=device).module, seen)
        ),
    )
    tf32_switches(not tf32)
    model = BenchModel("tiny", ModelSpec("NRP_resG", TINY), checkpoint, "test weights", False)
    runner = torch_configs.torch_runner(name, model, TargetContext("cpu", 1))
    images = np.zeros((1, 16, 16, 3), np.uint8)
    runner.infer(runner.put(images.transpose(0, 3, 1, 2).astype(np.float32)))
    runner.purify(images, False)
    assert seen == [(tf32, tf32)] * 2
    assert tf32_switches() == (not tf32, not tf32)
    assert CATALOGUE[name].devices == (("cuda",) if tf32 else ("cpu", "cuda"))
