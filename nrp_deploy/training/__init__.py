"""Torch: the self-supervised NRP training loop (SSP adversaries on the fly, feature + pixel loss).

``TrainConfig`` lives in the torch-free ``config`` module; the torch names below load lazily (PEP 562) so
that the CLI can read the configuration's defaults without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nrp_deploy.training.config import TrainConfig
    from nrp_deploy.training.loop import TrainResult, save_weights, train

__all__ = ["TrainConfig", "TrainResult", "save_weights", "train"]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from nrp_deploy.training import config as module
    elif name in ("TrainResult", "save_weights", "train"):
        from nrp_deploy.training import loop as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
