"""Triton Python-backend models, written into model repositories as ``model.py`` (never imported here).

``purifier_model``: serves a ``Purifier`` of any backend (``nrp serve``; needs nrp_deploy where the server
runs). ``preprocess`` / ``postprocess`` / ``onnx_purifier``: the self-contained models of an exported
repository (numpy and onnxruntime only, for any Triton, such as NGC's container).
"""
