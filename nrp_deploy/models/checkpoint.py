"""Checkpoint reading with no configuration: the architecture is read off the state dict.

Accepted: plain state dicts (as the authors published ``NRP.pth`` / ``NRP_resG.pth``), the usual training
wrappers (``params_ema``, ``params``, ``state_dict``, ``model``, ``net``), ``module.`` / ``_orig_mod.``
prefixes left by DataParallel and torch.compile, and ``.safetensors`` files. Torch files are read with
``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from nrp_deploy.errors import CheckpointError
from nrp_deploy.models.spec import ModelSpec

_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")
_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 8


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


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointError(f"blocks of {prefix} are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def detect_spec(state: Mapping[str, torch.Tensor]) -> ModelSpec:
    """Architecture and hyper-parameters implied by the keys and shapes of a state dict."""
    if "conv_first.weight" not in state:
        raise CheckpointError(
            "not an NRP checkpoint: missing key 'conv_first.weight'; "
            f"first keys found: {_listing(sorted(state))}"
        )
    nf, in_nc = _conv_channels(state, "conv_first.weight")
    if "RRDB_trunk.0.RDB1.conv1.weight" in state or "trunk_conv.weight" in state:
        nb = _count_blocks(state, "RRDB_trunk")
        gc_key = "RRDB_trunk.0.RDB1.conv1.weight"
        gc = _conv_channels(state, gc_key)[0] if gc_key in state else 32
        out_nc = _conv_channels(state, "trunk_conv.weight")[0] if "trunk_conv.weight" in state else 3
        return _rgb_spec("NRP", {"in_nc": in_nc, "out_nc": out_nc, "nf": nf, "nb": nb, "gc": gc})
    if "conv_last.weight" in state or "recon_trunk.0.conv1.weight" in state:
        nb = _count_blocks(state, "recon_trunk")
        out_nc = _conv_channels(state, "conv_last.weight")[0] if "conv_last.weight" in state else 3
        return _rgb_spec("NRP_resG", {"in_nc": in_nc, "out_nc": out_nc, "nf": nf, "nb": nb})
    raise CheckpointError(
        "not an NRP checkpoint: found 'conv_first.weight' but neither the NRP keys (RRDB_trunk.*, trunk_conv.*) "
        f"nor the NRP_resG keys (recon_trunk.*, conv_last.*); keys found: {_listing(sorted(state))}"
    )


def _conv_channels(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, int]:
    """(output, input) channels of the 2-D convolution weight ``key``; a tensor of another rank is refused."""
    shape = tuple(state[key].shape)
    if len(shape) != 4:
        raise CheckpointError(
            f"{key} has shape {shape}; a convolution weight has 4 dimensions (out, in, kh, kw)"
        )
    return int(shape[0]), int(shape[1])


def _rgb_spec(architecture: str, config: dict[str, int]) -> ModelSpec:
    """The spec, once its image channels are checked: a purifier maps RGB images to RGB images."""
    for key, role in (("in_nc", "input"), ("out_nc", "output")):
        if config[key] != 3:
            raise CheckpointError(
                f"this {architecture} checkpoint has {config[key]} {role} channels; a purifier takes and "
                "returns 3 (RGB) channels"
            )
    return ModelSpec(architecture, config)


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
            f"{source} holds NaN or infinite values in {len(bad)} tensor(s): {_listing(bad)}; the weights are "
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
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches ({len(wrong_shape)}): {_listing(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match {spec.describe()}: " + "; ".join(problems))
    check_finite(state, source)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval(), spec


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
