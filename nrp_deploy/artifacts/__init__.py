"""Artifacts, torch-free: what the export writes and the runtime reads.

``metadata``: the sidecar (``<artifact>.json``) with its fidelity verdict, ``PRECISIONS``, the one PSNR;
``specs``: tensor specs and shape profiles; ``sources``: from a registry name or path to an identified
``ModelSource``; ``cache``: the artifact cache folder and its lookups. Nothing here imports torch, ONNX or
TensorRT, so a production machine reads artifacts with numpy alone.
"""
