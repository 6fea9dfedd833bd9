"""Checkpoint reading with no configuration: the architecture is read off the state dict (``detect_spec``,
from each architecture's record in ``spec``).

Accepted: plain state dicts (as the authors published ``NRP.pth`` / ``NRP_resG.pth``), the usual training
wrappers (``params_ema``, ``params``, ``state_dict``, ``model``, ``net``), ``module.`` / ``_orig_mod.``
prefixes left by DataParallel and torch.compile, and ``.safetensors`` files. Torch files are read with
``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from nrp_deploy.errors import CheckpointError
from nrp_deploy.models.spec import detect_spec, key_listing

__all__ = ["build_from_state", "check_finite", "detect_spec", "read_state_dict"]

_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped and with training prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds pickled Python objects beyond tensors and containers, "
            "which are refused (checkpoints load with weights_only=True); save model.state_dict() instead"
        ) from exc
    except Exception as exc:  # torch and safetensors raise many types for unreadable files
        first_line = (str(exc).strip().splitlines() or [""])[0]  # torch's unpickling errors run to pages
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first_line}") from exc
    return _unwrap(raw, path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _is_tensor_dict(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_dict(obj):
        raise CheckpointError(
            f"{path} holds no state dict of tensors (looked at the top level and under "
            f"{', '.join(_WRAPPER_KEYS)})"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        state[name] = value
    return state


def _is_tensor_dict(obj: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


def check_finite(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Refuse a state dict with NaN or infinite values: such a model outputs NaN (black images)."""
    bad = [
        key
        for key, value in state.items()
        if value.is_floating_point() or value.is_complex()
        if not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or infinite values in {len(bad)} tensor(s): {key_listing(bad)}; the weights are "
            "corrupt (or training diverged), and the model would output garbage"
        )


def build_from_state(state: Mapping[str, torch.Tensor], source: str = "checkpoint"):
    """Build the detected architecture and load ``state`` strictly, naming any key or shape mismatch."""
    spec = detect_spec(state)
    model = spec.build()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {key_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {key_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches ({len(wrong_shape)}): {key_listing(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match {spec.describe()}: " + "; ".join(problems))
    check_finite(state, source)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval(), spec
