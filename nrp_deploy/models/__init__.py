"""Torch models: the published NRP and NRP_resG architectures, checkpoint loading and the model registry.

The names below are loaded lazily (PEP 562) so that the torch-free submodules, ``spec`` and ``registry``,
can be imported without torch: the torch-free runtime resolves registry names and reads receptive fields
through them, and importing a submodule always runs this package's ``__init__`` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nrp_deploy.models.architectures import NRP, NRP_resG
    from nrp_deploy.models.checkpoint import build_from_state, read_state_dict
    from nrp_deploy.models.loading import LoadedModel, load_model
    from nrp_deploy.models.spec import ModelSpec, detect_spec

__all__ = [
    "NRP",
    "LoadedModel",
    "ModelSpec",
    "NRP_resG",
    "build_from_state",
    "detect_spec",
    "load_model",
    "read_state_dict",
]


def __getattr__(name: str) -> Any:
    if name in ("NRP", "NRP_resG"):
        from nrp_deploy.models import architectures as module
    elif name in ("build_from_state", "read_state_dict"):
        from nrp_deploy.models import checkpoint as module
    elif name in ("LoadedModel", "load_model"):
        from nrp_deploy.models import loading as module
    elif name in ("ModelSpec", "detect_spec"):
        from nrp_deploy.models import spec as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
