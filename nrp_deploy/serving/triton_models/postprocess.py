"""Triton Python-backend model of an exported repository: the purifier network's output -> uint8 images.

float ``[N, 3, H, W]`` -> clamp to [0, 1], x255, round half to even -> uint8 ``[N, H, W, 3]``, as the runtime
does. Self-contained: numpy and ``nrp_prepost.py`` beside it.
"""

from __future__ import annotations

import json
import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nrp_prepost import float_to_uint8


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            y = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            tensor = pb_utils.Tensor(self.output_name, float_to_uint8(y))
            responses.append(pb_utils.InferenceResponse([tensor]))
        return responses
