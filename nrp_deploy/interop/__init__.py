"""Adapters for the ecosystem's attack libraries, so their attacks run against the deployed defence.

- ``PurifiedClassifier`` (``nrp_deploy.interop.purified``): classifier behind the purifier as one torch
  module with straight-through, full or EOT gradients, for torchattacks or any torch attack library;
- ``NRPPreprocessor`` (``nrp_deploy.interop.art``): an Adversarial Robustness Toolbox preprocessing
  defence for ``PyTorchClassifier(preprocessing_defences=[...])`` (needs the ``interop`` extra; import it
  from its module).
"""

from nrp_deploy.interop.purified import GRADIENTS, PurifiedClassifier

__all__ = ["GRADIENTS", "PurifiedClassifier"]
