"""nrp-deploy: run NRP adversarial purifiers in production.

The top-level package stays import-light (no torch): the torch-free runtime is what production stacks
embed; ``nrp_deploy.models``, ``.attacks``, ``.training`` and ``.export`` pull in torch when imported.
"""

__version__ = "0.1.0"
