"""Torch models: the published NRP / NRP_resG architectures, checkpoint loading and the model registry."""

from nrp_deploy.models.architectures import NRP, NRP_resG
from nrp_deploy.models.checkpoint import build_from_state, detect_spec, read_state_dict
from nrp_deploy.models.loading import LoadedModel, load_model
from nrp_deploy.models.spec import ModelSpec

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
