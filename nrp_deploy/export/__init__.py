"""Export: torch purifier -> FP32 ONNX, calibrated mixed-precision FP16 ONNX, INT8 Q/DQ ONNX, with metadata.

Import the submodules (``nrp_deploy.export.onnx``, ``.fp16``, ``.int8``, ``.fidelity``, ``.metadata``);
this package imports nothing itself, so the torch-free ``metadata`` reader stays importable without torch.
"""
