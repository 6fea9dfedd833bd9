"""One call from any model source to an eval-mode torch purifier."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nrp_deploy.errors import CheckpointError
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.models.checkpoint import build_from_state, read_state_dict
from nrp_deploy.models.registry import resolve
from nrp_deploy.models.spec import ModelSpec


@dataclass
class LoadedModel:
    module: torch.nn.Module
    spec: ModelSpec
    path: Path
    sha256: str
    name: str


def load_model(source: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Load a registry name (``default``, ``NRP``, ``NRP_resG``) or a checkpoint path, in eval mode."""
    if not isinstance(source, str | os.PathLike):
        raise CheckpointError(
            f"model source must be a registry name or a checkpoint path (str or os.PathLike), got "
            f"{type(source).__name__}"
        )
    resolved = resolve(source)
    state = read_state_dict(resolved.path)
    module, spec = build_from_state(state, source=str(resolved.path))
    module.requires_grad_(False)
    return LoadedModel(
        module=module.to(device),
        spec=spec,
        path=resolved.path,
        sha256=sha256_file(resolved.path),
        name=resolved.name,
    )
