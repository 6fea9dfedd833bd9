"""Torch: the self-supervised NRP training loop (SSP adversaries on the fly, feature + pixel loss).

``TrainConfig`` lives in the torch-free ``config`` module; the torch names below load lazily (PEP 562) so
that the CLI can read the configuration's defaults without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nrp_deploy.training.config import TrainConfig
    from nrp_deploy.training.loop import TrainResult, save_weights, train

_EXPORTS = {"TrainConfig": "config", "TrainResult": "loop", "save_weights": "loop", "train": "loop"}

__all__ = ["TrainConfig", "TrainResult", "save_weights", "train"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
