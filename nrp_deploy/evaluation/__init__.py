"""Reports that tie the attacks, the runtime and the metrics together (robustness, fidelity, benchmarks).

Submodules are imported by what uses them (``nrp_deploy.evaluation.robustness.evaluate``, ...), so that
importing one report does not load the torch stacks of the others.
"""
