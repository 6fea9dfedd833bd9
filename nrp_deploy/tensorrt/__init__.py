"""TensorRT, torch-free: support and version guards (``support``), what an engine is tied to and when it is
stale (``engine``), the engine cache (``cache``) and the builder (``builder``, ``nrp build``).

Importing this package, or any of its modules, never imports TensorRT: ``support.import_tensorrt`` does, on
first use, and says what to install when it is missing. The runtime's TensorRT backend and the Triton export
build engines through ``builder``; the export of ONNX models (torch) stays in ``nrp_deploy.export``.
"""
