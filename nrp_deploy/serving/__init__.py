"""Purification behind NVIDIA Triton Inference Server: ``nrp serve``, Triton model repositories, clients.

No server of our own: ``serve`` runs the ``tritonserver`` that the nvidia-pytriton wheel bundles over a
Python-backend model wrapping a Purifier; ``export_triton_repository`` writes a repository that any Triton
(NGC's container, Kubernetes deployments) loads unchanged; ``PurifierClient`` calls either over HTTP or gRPC.
Importing this package needs neither Triton nor tritonclient; each piece imports what it uses when used.
"""

from nrp_deploy.serving.client import PurifierClient
from nrp_deploy.serving.protocol import INPUT, MODEL_NAME, OUTPUT
from nrp_deploy.serving.serve import ServeSettings, serve, write_serve_repository
from nrp_deploy.serving.triton_server import Endpoints, ServerError, TritonServer

__all__ = [
    "INPUT",
    "MODEL_NAME",
    "OUTPUT",
    "Endpoints",
    "PurifierClient",
    "ServeSettings",
    "ServerError",
    "TritonServer",
    "serve",
    "write_serve_repository",
]
