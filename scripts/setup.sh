#!/usr/bin/env bash
# Create .venv (if missing) and install nrp-deploy with everything the demo, the exporters and the tests use.
# torch is installed first and pinned, so pip takes the CPU wheel instead of resolving a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${NRP_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[cpu,export,attacks,bench,openvino,nvrtc,dev]"
# NVIDIA's TensorRT bindings wheels (names only; TensorRT's libraries are not needed) for the API-name test.
.venv/bin/python scripts/tensorrt_api_names.py fetch ||
  echo "TensorRT bindings not fetched; the committed name snapshot is checked instead"
.venv/bin/python -c "import nrp_deploy, torch, onnxruntime; print('nrp-deploy', nrp_deploy.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
