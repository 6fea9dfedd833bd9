"""Triton Python-backend model running the purifier ONNX with ONNX Runtime.

The stand-in for Triton's onnxruntime backend where the server has only the Python backend (the server
bundled in nvidia-pytriton): same tensors, same batching, ``model.onnx`` beside this file. Needs numpy and
onnxruntime in the server's Python.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        settings = json.loads(config["parameters"]["nrp_settings"]["string_value"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if settings.get("threads"):
            options.intra_op_num_threads = int(settings["threads"])
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        """Requests of one batch share a shape (Triton batches only equal shapes): one session run."""
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: np.concatenate(inputs)})
        except Exception as exc:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))] * len(requests)
        bounds = np.cumsum([len(x) for x in inputs])[:-1]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, y)]) for y in np.split(out, bounds)
        ]
