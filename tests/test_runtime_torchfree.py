"""The runtime imports and purifies end to end in a process where ``import torch`` fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.models import load_model
from nrp_deploy.models.eager import EagerPurifier
from nrp_deploy.models.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]  # the checkout under test, whatever the working directory
BLOCKER = '''
import sys


class _NoTorch:
    """Meta-path finder that makes torch (and anything under it) unimportable, as on a slim deployment."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"import of {name} blocked: this process simulates a machine without torch")
        return None


sys.meta_path.insert(0, _NoTorch())
'''

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from nrp_deploy.errors import BackendUnavailableError
    from nrp_deploy.runtime import DynamicDefense, available_backends, load_purifier

    args = json.loads(sys.argv[1])
    purifier = load_purifier(args["onnx"], threads=1)
    images = np.load(args["images"])
    out = purifier(images)
    noisy = purifier(images, dynamic=DynamicDefense(seed=11))
    try:
        load_purifier(args["checkpoint"], backend="auto")
        fresh_checkpoint = "loaded"
    except BackendUnavailableError as exc:
        fresh_checkpoint = str(exc)
    np.save(args["out"], out)
    print(json.dumps({
        "backend": purifier.backend_name,
        "torch_imported": any(m == "torch" or m.startswith("torch.") for m in sys.modules),
        "noisy_differs": bool((noisy != out).any()),
        "torch_backend": available_backends()["torch"],
        "fresh_checkpoint": fresh_checkpoint,
    }))
    """
)


def test_runtime_runs_an_onnx_purifier_without_torch(tmp_path: Path):
    torch.manual_seed(3)
    checkpoint = tmp_path / "model.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build().state_dict(), checkpoint)
    onnx_path = tmp_path / "model.onnx"
    export_onnx(str(checkpoint), onnx_path)
    images = np.random.default_rng(6).integers(0, 256, size=(2, 24, 28, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(REPO)])}
    env["NRP_DEPLOY_CACHE"] = str(tmp_path / "empty-cache")
    args = {
        "onnx": str(onnx_path),
        "checkpoint": str(checkpoint),
        "images": str(tmp_path / "images.npy"),
        "out": str(tmp_path / "out.npy"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["torch_imported"] is False
    assert report["backend"] == "onnxruntime-cpu"
    assert report["noisy_differs"] is True
    assert "torch is not installed" in report["torch_backend"]
    assert "install torch" in report["fresh_checkpoint"], report["fresh_checkpoint"]

    eager = EagerPurifier(load_model(checkpoint).module)(images)
    assert np.abs(np.load(tmp_path / "out.npy").astype(int) - eager).max() <= 1


def test_the_blocker_really_blocks_torch(tmp_path: Path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked" in proc.stderr


TORCH_FREE_PACKAGES = ("runtime", "kernels", "tensorrt", "artifacts")


def test_every_module_of_the_torch_free_layers_imports_without_torch(tmp_path: Path):
    """runtime, kernels, tensorrt and artifacts: each of their modules imports where torch cannot, and
    importing them all loads no torch, TensorRT or ONNX Runtime."""
    package = REPO / "nrp_deploy"
    modules = sorted(
        ".".join(("nrp_deploy", *path.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
        for name in TORCH_FREE_PACKAGES
        for path in (package / name).rglob("*.py")
    )
    assert "nrp_deploy.runtime.on_demand" in modules and "nrp_deploy.tensorrt.cache" in modules
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    code = textwrap.dedent(
        """
        import importlib, json, sys
        for name in json.loads(sys.argv[1]):
            importlib.import_module(name)
        heavy = ("torch", "tensorrt", "onnxruntime")
        print(json.dumps(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy})))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(modules)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


SHIPPED_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from nrp_deploy.cli import main
    from nrp_deploy.runtime import load_purifier

    args = json.loads(sys.argv[1])
    with load_purifier("default", threads=1) as purifier:
        np.save(args["out"], purifier(np.load(args["images"])))
        backend = purifier.backend_name
    rc = main(["purify", args["folder"], "-o", args["purified"], "--model", "default", "--no-progress"])
    print(json.dumps({
        "backend": backend,
        "rc": rc,
        "torch_imported": any(m == "torch" or m.startswith("torch.") for m in sys.modules),
    }))
    """
)


def test_the_default_purifier_runs_from_its_shipped_onnx_without_torch(tmp_path: Path):
    """What an install with only the ``cpu`` extra does: an empty artifact cache, no torch, and the default
    purifier still runs (the ONNX shipped in the package), through the API and ``nrp purify``, as eager
    torch does."""
    images = np.random.default_rng(8).integers(0, 256, size=(2, 24, 28, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "photos").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "photos" / "a.png")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(REPO)])}
    env["NRP_DEPLOY_CACHE"] = str(tmp_path / "empty-cache")
    args = {
        "images": str(tmp_path / "images.npy"),
        "out": str(tmp_path / "out.npy"),
        "folder": str(tmp_path / "photos"),
        "purified": str(tmp_path / "purified"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SHIPPED_CHILD, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"backend": "onnxruntime-cpu", "rc": 0, "torch_imported": False}
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())

    eager = EagerPurifier(load_model("default").module)(images)
    assert np.abs(np.load(tmp_path / "out.npy").astype(int) - eager).max() <= 1
    written = np.asarray(Image.open(tmp_path / "purified" / "a.png"))
    assert np.abs(written.astype(int) - eager[0]).max() <= 1
