"""The files that travel inside the package: the registry, the default purifier, the example photos.

``models/`` holds the registry manifest, the default purifier's weights and its model card; ``artifacts/``
the default purifier's FP32 ONNX with its sidecar, named as in the artifact cache, so an install without
torch runs the default (``scripts/ship_default_onnx.py`` writes it); ``examples/`` the four example photos and their attribution; ``imagenet_classes.txt`` the ImageNet-1k class names (see
``IMAGENET_CLASSES.md`` for where they come from). Everything is found through ``importlib.resources``, so
a wheel installed anywhere finds its own files and never looks for a source checkout. Torch-free.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from nrp_deploy.errors import NRPDeployError


def asset_path(*parts: str) -> Path:
    """The file-system path of a packaged file or folder (``asset_path("models", "manifest.json")``)."""
    node = resources.files(__name__).joinpath(*parts)
    path = Path(str(node))
    if not path.exists():
        raise NRPDeployError(
            f"packaged file {'/'.join(parts)} is missing from {path.parent} (a broken or zipped install of "
            "nrp-deploy: reinstall it from its wheel)"
        )
    return path


def shipped_models_dir() -> Path:
    """The registry's packaged folder: ``manifest.json``, ``default.safetensors`` and its card."""
    return asset_path("models")


def shipped_artifacts_dir() -> Path:
    """The ONNX artifacts that travel with the package, laid out as the artifact cache; a read-only second
    place the cache lookup searches (``artifacts.cache.find_cached_onnx``)."""
    return asset_path("artifacts")


def examples_dir() -> Path:
    """The example photos (224x224 PNGs) used by ``nrp demo`` and as default calibration images."""
    return asset_path("examples")


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in class-index order (index 281 is "tabby cat")."""
    names = asset_path("imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise NRPDeployError(f"packaged imagenet_classes.txt lists {len(names)} names, expected 1000")
    return tuple(names)


def class_label(index: int) -> str:
    """``"tabby cat (281)"``: an ImageNet class index with its name, as reports and grids show it."""
    names = imagenet_class_names()
    return f"{names[index]} ({index})" if 0 <= index < len(names) else str(index)
