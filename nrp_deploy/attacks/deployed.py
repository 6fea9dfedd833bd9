"""The deployed purifier (any backend, any precision) as a forward-only torch module, for white-box attacks.

A white-box attacker attacks what is deployed: the INT8 ONNX model or TensorRT engine, not only the torch
checkpoint it was made from. Those run outside torch and give no gradient, so an attack runs them forward
and approximates their backward pass: the identity (``pgd_attack(..., mode="bpda")``, BPDA) or the torch
checkpoint's gradient (``nrp_deploy.interop``). ``DeployedPurifier`` wraps any ``purify(float32 NCHW
[0, 1] array) -> array`` callable, the runtime's ``Purifier`` included, so the same attacks run against
every artifact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class DeployedPurifier(nn.Module):
    """``purify`` (numpy float32 NCHW in [0, 1] -> same) as a torch module; no gradient flows through it.

    The output is on the input's device and detached. It holds one empty parameter so that libraries that
    find the device from ``module.parameters()`` see where it was moved, and stays in eval mode.
    """

    def __init__(self, purify: Callable[[np.ndarray], np.ndarray], name: str = "deployed purifier") -> None:
        super().__init__()
        self.purify = purify
        self.name = name
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        super().train(False)

    def train(self, mode: bool = True) -> DeployedPurifier:
        """Does nothing: there are no training-time layers to switch."""
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        out = np.asarray(self.purify(x), dtype=np.float32)
        if out.shape != x.shape:
            raise ValueError(f"{self.name} returned shape {out.shape} for input {x.shape}")
        return torch.from_numpy(out).to(images.device, images.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
