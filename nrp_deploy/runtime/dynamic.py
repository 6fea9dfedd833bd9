"""The dynamic defence (random noise before purification) on the host path.

x' = clamp(min(max(x + sigma * N(0, 1), x - eps), x + eps), 0, 1), as the published ``--dynamic`` does, with
the noise drawn from Philox4x32-10 + Box-Muller keyed by (seed, image index, element index): the numpy
reference in ``nrp_deploy.kernels.philox`` that the fused CUDA kernel reproduces (its Philox words bit for
bit, its normals within float32 rounding), so a GPU run can be checked against this one element by element
and any run can be replayed from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nrp_deploy.errors import InputError
from nrp_deploy.kernels import philox
from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA


def check_noise_level(name: str, value: object) -> None:
    """Refuse a noise level (sigma or eps) the defence cannot apply: it must be a finite number >= 0.

    The one rule for every place a level is given (``DynamicDefense``, the evaluation's and the servers'
    settings, the command line), so each names its own ``name`` in the ``InputError``.
    """
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class DynamicDefense:
    """Noise settings of the dynamic defence; ``seed=None`` draws a fresh seed from the OS for every call.

    A fixed seed makes a call reproducible (and the same on CPU and GPU). The noise of image ``n`` of a call
    is keyed by ``start_index + n``, so a batch processed in chunks gets the noise of the whole batch.
    """

    sigma: float = PUBLISHED_SIGMA
    eps: float = PUBLISHED_EPS
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("sigma", "eps"):
            check_noise_level(f"DynamicDefense.{name}", getattr(self, name))
        if self.seed is not None:
            philox.seed_key(self.seed)  # raises InputError for anything but a 64-bit unsigned integer

    def call_seed(self) -> int:
        """The seed one call uses: the fixed one, or a fresh one from the OS."""
        return philox.draw_seed() if self.seed is None else self.seed

    def apply(self, x: np.ndarray, seed: int, start_index: int = 0) -> np.ndarray:
        """Noisy, projected copy of a float32 NCHW batch in [0, 1]."""
        if start_index < 0:
            raise InputError(f"start_index must be >= 0, got {start_index}")
        return philox.apply_dynamic_defense(x, self.sigma, self.eps, seed, start_index=start_index)
