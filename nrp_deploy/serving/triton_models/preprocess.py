"""Triton Python-backend model of an exported repository: uint8 images -> the purifier network's input.

uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [0, 1], plus the dynamic defence (Philox noise, keyed by
the request's seed and start index exactly as the runtime keys it) when the request or the repository's
default asks for it. Self-contained: numpy and the ``nrp_*.py`` files copied beside it, so any Triton with
the Python backend runs it. Each request is checked and answered on its own.
"""

from __future__ import annotations

import json
import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nrp_philox import apply_dynamic_defense, draw_seed
from nrp_prepost import uint8_to_float
from nrp_protocol import INPUT, check_images, parse_parameters


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        settings = json.loads(config["parameters"]["nrp_settings"]["string_value"])
        self.dynamic_default = settings["dynamic"]
        self.sigma, self.eps = settings["sigma"], settings["eps"]
        self.max_pixels = settings["max_pixels"]
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                options = parse_parameters(json.loads(request.parameters() or "{}"), self.dynamic_default)
                images = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
                check_images(images, self.max_pixels)
                x = uint8_to_float(images)
                if options.dynamic:
                    seed = draw_seed() if options.seed is None else options.seed
                    x = apply_dynamic_defense(x, self.sigma, self.eps, seed, options.start_index)
                tensor = pb_utils.Tensor(self.output_name, x.astype(self.output_dtype, copy=False))
                responses.append(pb_utils.InferenceResponse([tensor]))
            except Exception as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
