"""Reports that tie the attacks, the runtime and the metrics together: robustness and fidelity.

Submodules are imported by what uses them (``nrp_deploy.evaluation.robustness.evaluate``, ...), so that
importing the metrics does not load the torch stacks of the attacks. The latency benchmark is
``nrp_deploy.bench``.
"""
