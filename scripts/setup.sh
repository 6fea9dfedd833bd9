#!/usr/bin/env bash
# Create .venv (if missing) and install nrp-deploy with everything the demo, the exporters and the tests use.
#
#   bash scripts/setup.sh          # CPU machine: ONNX Runtime (CPU), OpenVINO, the CPU torch wheel
#   bash scripts/setup.sh --gpu    # NVIDIA GPU machine: the `gpu` extra (onnxruntime-gpu, cuda-bindings,
#                                  # NVRTC) instead of ONNX Runtime for CPU, so the `gpu` tests run
#
# torch is installed first and pinned, so pip does not resolve another build later (the pinned wheel from
# the default index is the CPU build here and a CUDA build on Linux x86-64 GPU machines).
# `onnxruntime` and `onnxruntime-gpu` install the same module, so the one not wanted is removed first.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=cpu
case "${1:-}" in
  "") ;;
  --gpu) mode=gpu ;;
  *) echo "usage: $0 [--gpu]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${NRP_TORCH_VERSION:-2.13.0}"
if [ "$mode" = gpu ]; then
  .venv/bin/python -m pip uninstall -q -y onnxruntime 2>/dev/null || true
  .venv/bin/python -m pip install -q -e ".[gpu,export,attacks,interop,bench,kubernetes,ray,dev]"
else
  .venv/bin/python -m pip uninstall -q -y onnxruntime-gpu 2>/dev/null || true
  .venv/bin/python -m pip install -q -e ".[cpu,export,attacks,interop,bench,openvino,nvrtc,kubernetes,ray,dev]"
fi
# The transfer attacks come from torchattacks, installed alone: its metadata requires torchvision (which it
# never imports, and whose CPU wheels break here) and requests~=2.25.1 (which downgrades urllib3 under twine).
.venv/bin/python -m pip install -q --no-deps "torchattacks==3.5.1"
# `nrp serve` runs the Triton server bundled in nvidia-pytriton, which requires numpy<2: it gets its own
# torch-free environment, .venv-serving (tests/test_serving.py runs the serving tests in it). OpenVINO's
# wheels take numpy 1.16.6 to 2.5, so the one resolve keeps numpy<2 and `nrp serve --backend openvino`
# (and `auto` over ONNX Runtime and OpenVINO) runs there.
if [ ! -x .venv-serving/bin/python ]; then
  "$PY" -m venv .venv-serving
fi
.venv-serving/bin/python -m pip install -q --upgrade pip
.venv-serving/bin/python -m pip install -q -e ".[serve,cpu,openvino,dev]"
# NVIDIA's TensorRT bindings wheels (names only; TensorRT's libraries are not needed) for the API-name test.
.venv/bin/python scripts/tensorrt_api_names.py fetch ||
  echo "TensorRT bindings not fetched; the committed name snapshot is checked instead"
.venv/bin/python -c "import nrp_deploy, torch, onnxruntime as ort; print('nrp-deploy', nrp_deploy.__version__, '| torch', torch.__version__, '| torch CUDA', torch.cuda.is_available(), '| onnxruntime', ort.__version__, ort.get_available_providers())"
.venv-serving/bin/python -c "import numpy, openvino, pytriton, tritonclient; print('serving env | numpy', numpy.__version__, '| openvino', openvino.get_version())"
# deploy/kubernetes is rendered by `kubectl kustomize` (kustomize v5 features: components, labels); Debian 12's
# kubernetes-client (1.20) is too old for them, so kubectl is not installed here.
if command -v kubectl >/dev/null; then
  echo "kubectl | $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
else
  echo "kubectl not found: tests/test_kubernetes_manifests.py needs it to render deploy/kubernetes" >&2
fi
