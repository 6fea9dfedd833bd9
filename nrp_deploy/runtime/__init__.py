"""The slim, torch-free runtime: ``load_purifier`` and the ``Purifier`` it returns.

Embed this in a production stack: it needs numpy and one inference engine (ONNX Runtime, TensorRT, or
torch for the eager baseline); torch is imported only by the torch backend, and by ``on_demand`` when it
must export a checkpoint that has no cached ONNX yet. Typed backend options (``OrtOptions``,
``TorchOptions``, ``TensorRTOptions``, ``OpenVinoOptions``) are handed on from ``backends.options``.
"""

from nrp_deploy.runtime.backends import BACKENDS, Backend, DeviceBackend, available_backends
from nrp_deploy.runtime.backends.options import (
    BackendOptions,
    OpenVinoOptions,
    OrtOptions,
    TensorRTOptions,
    TorchOptions,
)
from nrp_deploy.runtime.dynamic import DynamicDefense
from nrp_deploy.runtime.purifier import Purifier, load_purifier
from nrp_deploy.runtime.tiling import TileConfig

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendOptions",
    "DeviceBackend",
    "DynamicDefense",
    "OpenVinoOptions",
    "OrtOptions",
    "Purifier",
    "TensorRTOptions",
    "TileConfig",
    "TorchOptions",
    "available_backends",
    "load_purifier",
]
