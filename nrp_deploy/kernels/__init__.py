"""Fused CUDA pre/post-processing kernels, their NVRTC loader, and the numpy reference of the same maths.

Importing this package needs neither torch nor cuda-python: ``cuda.bindings`` is imported only when a
kernel is compiled or loaded, and a missing install raises ``BackendUnavailableError`` saying what to
install. The numpy reference (``philox``, ``reference``) works everywhere.
"""

from nrp_deploy.kernels.compiler import cache_dir, compile_kernels, nvrtc_version
from nrp_deploy.kernels.cuda_api import cuda_device_count
from nrp_deploy.kernels.loader import FusedKernels
from nrp_deploy.kernels.philox import apply_dynamic_defense, draw_seed, dynamic_noise, philox4x32_10
from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference

__all__ = [
    "FusedKernels",
    "apply_dynamic_defense",
    "cache_dir",
    "compile_kernels",
    "cuda_device_count",
    "draw_seed",
    "dynamic_noise",
    "nvrtc_version",
    "philox4x32_10",
    "postprocess_reference",
    "preprocess_reference",
]
