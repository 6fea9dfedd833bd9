"""Training checkpoints that resume exactly: weights, optimisers, scheduler, step and every RNG state.

A checkpoint is one torch file written atomically (a crash mid-save keeps the previous one) and read back
with ``weights_only=True``: it holds tensors, numbers, strings and lists only. The run's configuration is
stored with it, and resuming under a different configuration is refused rather than silently mixed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from nrp_deploy.errors import CheckpointError
from nrp_deploy.fileutil import write_bytes_atomic

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        raise CheckpointError(f"cannot read training checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """The data generator's state plus torch's global CPU (and CUDA) states."""
    states = {"data": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(generator: torch.Generator, states: dict[str, Any]) -> None:
    generator.set_state(states["data"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
