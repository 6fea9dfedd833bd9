"""The CUDA sources build for every architecture we deploy to, with NVRTC (no GPU) and with nvcc.

Also: the on-disk binary cache, the choice of target for a device, and the promise that importing
``nrp_deploy.kernels`` needs neither torch nor cuda-python.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from importlib import resources

import pytest

from nrp_deploy.errors import BackendUnavailableError
from nrp_deploy.kernels import compiler

ARCHS = ["sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"]  # Turing .. Hopper, Jetson Orin = sm_87
KERNELS = [
    f"nrp_pre_{src}_{dst}{noise}"
    for src in ("u8x4", "u8", "f32")
    for dst in ("f16", "f32")
    for noise in ("", "_noise")
] + [f"nrp_post_{src}_{dst}" for src in ("f16", "f32") for dst in ("u8x4", "u8")]


def _have_nvrtc() -> bool:
    try:
        compiler.nvrtc_version()
    except BackendUnavailableError:
        return False
    return True


needs_nvrtc = pytest.mark.skipif(not _have_nvrtc(), reason="cuda-bindings / nvidia-cuda-nvrtc not installed")


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_cubin(arch):
    cubin = compiler.compile_kernels(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNELS:
        assert name.encode() in cubin, name


@needs_nvrtc
def test_nvrtc_ptx_for_the_driver_jit():
    ptx = compiler.compile_kernels("compute_80").rstrip(b"\0").decode()
    assert ".target sm_80" in ptx
    assert all(f".entry {name}(" in ptx for name in KERNELS)
    assert "cvt.rn.f16x2.f32" in ptx  # packed half conversion on sm_80+
    assert ".global .align" not in ptx  # no stray device globals: the kernels are pure functions of params


@needs_nvrtc
def test_fast_sincos_variant_uses_mufu():
    accurate = compiler.compile_kernels("compute_90").decode(errors="replace")
    fast = compiler.compile_kernels("compute_90", fast_sincos=True).decode(errors="replace")
    assert "sin.approx.f32" not in accurate
    assert "sin.approx.f32" in fast and "cos.approx.f32" in fast
    assert compiler.cache_key("sm_90") != compiler.cache_key("sm_90", fast_sincos=True)


@needs_nvrtc
def test_bad_arch_is_rejected():
    with pytest.raises(ValueError, match="sm_90"):
        compiler.compile_kernels("hopper")


@needs_nvrtc
def test_target_prefers_cubin_then_ptx(monkeypatch):
    monkeypatch.setattr(compiler, "supported_archs", lambda: (75, 80, 86, 87, 89, 90))
    assert compiler.target_for(8, 6) == "sm_86"
    assert compiler.target_for(12, 0) == "compute_90"  # newer GPU than the NVRTC wheel: PTX + driver JIT
    with pytest.raises(BackendUnavailableError, match=r"compute capability 6\.1"):
        compiler.target_for(6, 1)


@needs_nvrtc
def test_binary_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path))
    assert compiler.cache_dir() == tmp_path / "kernels"
    calls = []
    monkeypatch.setattr(
        compiler, "compile_kernels", lambda arch, fast: calls.append(arch) or b"CUBIN:" + arch.encode()
    )
    assert compiler.cached_kernels("sm_86") == b"CUBIN:sm_86"
    assert compiler.cached_kernels("sm_86") == b"CUBIN:sm_86"
    assert compiler.cached_kernels("sm_90") == b"CUBIN:sm_90"
    assert calls == ["sm_86", "sm_90"]  # the second sm_86 call came from disk
    files = sorted(p.name for p in (tmp_path / "kernels").iterdir())
    assert len(files) == 2 and all(f.endswith(".cubin") for f in files)
    # The key covers sources, arch, options and the NVRTC version.
    assert compiler.cache_key("sm_86") != compiler.cache_key("sm_90")
    monkeypatch.setattr(compiler, "nvrtc_version", lambda: (99, 0))
    assert compiler.cached_kernels("sm_86") == b"CUBIN:sm_86" and calls[-1] == "sm_86" and len(calls) == 3


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_nvcc_compiles_for_all_archs(tmp_path):
    src = resources.files("nrp_deploy.kernels") / "nrp_kernels.cu"
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [
        "nvcc",
        "-fatbin",
        "-std=c++17",
        "-Werror=all-warnings",
        *gencode,
        str(src),
        "-o",
        str(tmp_path / "k.fatbin"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "k.fatbin").stat().st_size > 0


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_import_needs_neither_torch_nor_cuda_python():
    proc = _run_python(
        """
        import sys
        for name in ("torch", "cuda", "cuda.bindings"):
            sys.modules[name] = None  # any import of these now fails
        import nrp_deploy.kernels as k
        from nrp_deploy.errors import BackendUnavailableError
        assert k.cuda_device_count() == 0
        k.dynamic_noise(1, (1, 3, 4, 4))
        for call in (lambda: k.compile_kernels("sm_90"), lambda: k.FusedKernels()):
            try:
                call()
            except BackendUnavailableError as exc:
                assert "nrp-deploy[nvrtc]" in str(exc) and "nrp-deploy[gpu]" in str(exc), exc
            else:
                raise AssertionError("expected BackendUnavailableError")
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
