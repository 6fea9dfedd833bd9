"""The latency / throughput harness behind ``nrp bench``.

``runner`` (the backend catalogue and the ``Runner`` every backend is wrapped in), ``targets`` and
``torch_configs`` (the factories for the runtime's and the eager backends), ``machine`` (what a result ran
on), ``stats`` (medians, paired speed-ups, interleaving), ``harness`` (``run_benchmark``) and ``report``
(tables, JSON, Markdown, plots). Submodules are imported by what uses them, so the torch-free parts stay
torch-free.
"""
