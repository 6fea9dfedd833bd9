#!/usr/bin/env bash
# Reproduce the committed CPU results (benchmarks/results/cpu_*) with `nrp bench`.
#
# Run it on a quiet machine: every result records the load average at its start and end, and a busy
# machine slows multi-threaded eager torch more than the other backends (its OpenMP threads wait for each
# other whenever one is descheduled). The ONNX / INT8 artifacts land in the runtime's artifact cache and are
# shared by the runs. Registry models whose published weights are absent run with seeded random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
nrp=${NRP:-nrp}

# 1. The quick run, as a user would do it first.
"$nrp" bench --quick -o "$out/cpu_quick"

# 2. Headline: NRP_resG 224x224 batch 1, every CPU backend, all three scenarios; 2 threads, then 1.
"$nrp" bench --models NRP_resG --batch-sizes 1 --rounds 10 -o "$out/cpu_nrp_resg_224_b1"
"$nrp" bench --models NRP_resG --batch-sizes 1 --rounds 8 --threads 1 -o "$out/cpu_nrp_resg_224_b1_1thread"

# 3. Batch scaling of the main CPU paths, model only.
"$nrp" bench --models NRP_resG --batch-sizes 1 2 4 8 --scenarios model --rounds 4 \
    --backends torch-fp32 onnxruntime-cpu-fp32 onnxruntime-cpu-int8 openvino-cpu-fp32 openvino-cpu-int8 \
    -o "$out/cpu_nrp_resg_224_batches"

# 4. The full-size NRP (16.6 M MAC/pixel) at batch 1.
"$nrp" bench --models NRP --batch-sizes 1 --scenarios model e2e-dynamic --rounds 3 \
    --backends torch-fp32 torch-fp32-cl onnxruntime-cpu-fp32 onnxruntime-cpu-int8 openvino-cpu-fp32 \
    openvino-cpu-int8 -o "$out/cpu_nrp_224_b1"
