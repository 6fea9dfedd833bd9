"""Compile the kernel sources with NVRTC (no GPU and no CUDA toolkit needed) and cache the binaries on disk.

NVRTC comes as a pip wheel (nvidia-cuda-nvrtc-cu12 / nvidia-cuda-nvrtc) or from the system's CUDA
(JetPack's on Jetson), so a deployment machine never needs nvcc; ``cuda_api.nvrtc_library`` says which one
is in use. A compiled binary depends on the sources, the target architecture, the compile options and the
NVRTC version; the cache key is a hash of all four, so an upgrade or a source edit can never pick up a
stale binary.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from importlib import resources
from pathlib import Path

from nrp_deploy.errors import BackendUnavailableError
from nrp_deploy.fileutil import user_cache_dir, write_bytes_atomic
from nrp_deploy.kernels.cuda_api import CudaError, check, nvrtc_module

SOURCE = "nrp_kernels.cu"
HEADER = "nrp_kernels.cuh"
# Default FMA contraction stays on: the header marks the one multiply-add that must not be fused.
OPTIONS = ("--std=c++17",)
FAST_SINCOS = "-DNRP_FAST_SINCOS"


@functools.cache
def kernel_sources() -> tuple[str, str]:
    """The (.cu, .cuh) texts shipped inside the package."""
    pkg = resources.files("nrp_deploy.kernels")
    return pkg.joinpath(SOURCE).read_text(encoding="utf-8"), pkg.joinpath(HEADER).read_text(encoding="utf-8")


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library that compiles the kernels."""
    major, minor = check(nvrtc_module().nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def supported_archs() -> tuple[int, ...]:
    """SM versions this NVRTC can emit a CUBIN for, e.g. (75, 80, 86, ...)."""
    return tuple(int(a) for a in check(nvrtc_module().nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))


def _target_kind(arch: str) -> str:
    match = re.fullmatch(r"(sm|compute)_\d+[af]?", arch)
    if match is None:
        raise ValueError(f"arch must look like 'sm_90' or 'compute_90', got {arch!r}")
    return match.group(1)


def _options(fast_sincos: bool) -> tuple[str, ...]:
    return (*OPTIONS, FAST_SINCOS) if fast_sincos else OPTIONS


def compile_kernels(arch: str, fast_sincos: bool = False) -> bytes:
    """Compile the kernels for ``arch``: 'sm_XX' gives a CUBIN, 'compute_XX' gives PTX for the driver's JIT.

    Needs NVRTC only, no GPU: CI uses it to prove the sources build for every architecture we deploy to.
    ``fast_sincos`` selects the MUFU sin/cos in the noise (see nrp_sincos in the header).
    """
    kind = _target_kind(arch)
    nvrtc = nvrtc_module()
    source, header = kernel_sources()
    prog = check(
        nvrtc.nvrtcCreateProgram(source.encode(), SOURCE.encode(), 1, [header.encode()], [HEADER.encode()]),
        "nvrtcCreateProgram",
    )
    try:
        options = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in _options(fast_sincos))]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        if int(err) != 0:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            text = log.rstrip(b"\0").decode(errors="replace")
            raise CudaError(f"NVRTC failed to compile {SOURCE} for {arch} ({err.name}):\n{text}")
        if kind == "sm":
            size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            binary = b" " * size
            check(nvrtc.nvrtcGetCUBIN(prog, binary), "nvrtcGetCUBIN")
        else:
            size = check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            binary = b" " * size
            check(nvrtc.nvrtcGetPTX(prog, binary), "nvrtcGetPTX")
    finally:
        check(nvrtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")
    return binary


def target_for(major: int, minor: int) -> str:
    """The best target for a device of compute capability major.minor.

    A CUBIN when this NVRTC knows the architecture; otherwise PTX for the newest architecture it knows
    below the device's, which the driver JIT-compiles (a device newer than the wheel still works).
    """
    wanted = major * 10 + minor
    archs = supported_archs()
    if wanted in archs:
        return f"sm_{wanted}"
    older = [a for a in archs if a <= wanted]
    if not older:
        raise BackendUnavailableError(
            f"NVRTC {'.'.join(map(str, nvrtc_version()))} cannot target compute capability {major}.{minor} "
            f"(it supports sm_{min(archs)}..sm_{max(archs)}); install an NVRTC wheel that matches your GPU"
        )
    return f"compute_{max(older)}"


def cache_dir() -> Path:
    """Where compiled kernels are kept: $NRP_DEPLOY_CACHE/kernels, else $XDG_CACHE_HOME/nrp_deploy/kernels."""
    root = os.environ.get("NRP_DEPLOY_CACHE")
    if root:
        return Path(root) / "kernels"
    return user_cache_dir("kernels")


def cache_key(arch: str, fast_sincos: bool = False) -> str:
    source, header = kernel_sources()
    digest = hashlib.sha256()
    options = " ".join(_options(fast_sincos))
    for part in (source, header, arch, options, "nvrtc-{}.{}".format(*nvrtc_version())):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def cached_kernels(arch: str, fast_sincos: bool = False) -> bytes:
    """``compile_kernels`` through the on-disk cache (written atomically; an unreadable cache recompiles)."""
    suffix = "cubin" if arch.startswith("sm") else "ptx"
    path = cache_dir() / f"nrp_kernels-{arch}-{cache_key(arch, fast_sincos)}.{suffix}"
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        if data:
            return data
    binary = compile_kernels(arch, fast_sincos)
    with contextlib.suppress(OSError):  # a read-only home directory costs a recompile next time, no more
        write_bytes_atomic(path, binary)
    return binary
