"""Triton Python-backend model that serves a Purifier (``nrp serve`` writes it as ``model.py``).

Triton checks each request's dtype, rank, channel count and batch size before it gets here; this model
checks the rest (empty images, the pixel limit, the request parameters) request by request and answers
a bad request with its own error, so the other requests of the same dynamic batch are still served.
Requests without the dynamic defence whose images have one size run as one Purifier call; each request
with the dynamic defence runs alone, keyed by its own seed, so it replays exactly as in process, at the
noise level the server was started with (``ServeSettings.noise_sigma`` / ``noise_eps``).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        settings = json.loads(config["parameters"]["nrp_settings"]["string_value"])
        for entry in reversed(settings["sys_path"]):  # the launching interpreter's import path
            if entry not in sys.path:
                sys.path.insert(0, entry)
        from nrp_deploy.runtime import load_purifier

        device = settings["device"]
        if args["model_instance_kind"] == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        self.dynamic_default = settings["dynamic"]
        self.noise_level = {"sigma": settings["noise_sigma"], "eps": settings["noise_eps"]}
        self.max_pixels = settings["max_pixels"]
        self.purifier = load_purifier(
            settings["model"],
            backend=settings["backend"],
            precision=settings["precision"],
            device=device,
            threads=settings["threads"],
            max_pixels=self.max_pixels,
        )
        pb_utils.Logger.log_info(f"nrp purifier: {self.purifier.describe()}")

    def execute(self, requests: list) -> list:
        from nrp_deploy.runtime import DynamicDefense
        from nrp_deploy.serving.protocol import INPUT, check_images, parse_parameters

        responses: list = [None] * len(requests)
        plain: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
        for k, request in enumerate(requests):
            try:
                options = parse_parameters(json.loads(request.parameters() or "{}"), self.dynamic_default)
                images = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
                check_images(images, self.max_pixels)
            except Exception as exc:
                responses[k] = _error(exc)
                continue
            if options.dynamic:
                dynamic = DynamicDefense(**self.noise_level, seed=options.seed)
                responses[k] = self._respond([(k, images)], dynamic, options.start_index)[0]
            else:
                plain.setdefault(images.shape[1:3], []).append((k, images))
        for group in plain.values():
            for k, response in zip((k for k, _ in group), self._respond(group, None), strict=True):
                responses[k] = response
        return responses

    def _respond(self, group: list[tuple[int, np.ndarray]], dynamic: object, start_index: int = 0) -> list:
        """Purify a group's images in one call and split the result into one response per request (on a
        failure, an error response of its own for each request)."""
        from nrp_deploy.serving.protocol import OUTPUT

        try:
            out = self.purifier(
                np.concatenate([images for _, images in group]), dynamic=dynamic, start_index=start_index
            )
        except Exception as exc:
            # one response object per request: Triton's Python backend crashes when a response is repeated
            return [_error(exc) for _ in group]
        bounds = np.cumsum([len(images) for _, images in group])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, part)]) for part in np.split(out, bounds)]

    def finalize(self) -> None:
        self.purifier.close()


def _error(exc: Exception) -> object:
    from nrp_deploy.errors import NRPDeployError

    if isinstance(exc, NRPDeployError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
        )
    pb_utils.Logger.log_error(f"nrp purifier: {type(exc).__name__}: {exc}")
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")
    )
