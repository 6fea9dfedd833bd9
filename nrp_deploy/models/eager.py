"""The eager PyTorch baseline, kept as plain as the published purify.py.

Every optimised path (ONNX Runtime, TensorRT, fused kernels) is measured against this: float32 NCHW in
[0, 1] -> purifier -> clamp to [0, 1] -> *255 -> round -> uint8. Dynamic inference draws its Gaussian noise
with torch's own generator, as the published script does, and applies the same projection.
"""

from __future__ import annotations

import numpy as np
import torch

from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA


def dynamic_input(
    x: torch.Tensor,
    sigma: float = PUBLISHED_SIGMA,
    eps: float = PUBLISHED_EPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x' = clamp(min(max(x + sigma * N(0, 1), x - eps), x + eps), 0, 1), fresh noise per call."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noisy = x + sigma * noise
    return torch.clamp(torch.min(torch.max(noisy, x - eps), x + eps), 0.0, 1.0)


class EagerPurifier:
    """uint8 NHWC batches through a torch purifier module, with the published pre/post-processing."""

    def __init__(
        self,
        module: torch.nn.Module,
        device: str | torch.device = "cpu",
        dynamic: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.dynamic = dynamic
        self.generator = generator

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        # contiguous(): plain NCHW as the published script feeds it; the permuted view alone would keep
        # NHWC strides, and torch would silently run the convolutions channels_last.
        x = x.permute(0, 3, 1, 2).contiguous().float().div(255.0)
        if self.dynamic:
            x = dynamic_input(x, generator=self.generator)
        y = self.module(x).clamp(0.0, 1.0)
        out = y.mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
        return np.ascontiguousarray(out.cpu().numpy())
