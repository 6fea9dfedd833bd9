"""Batch purification on engines people already run: Ray Data (``nrp purify --ray``). No engine of our own.

``BatchPurifier`` is the callable class for ``ray.data.Dataset.map_batches`` (one purifier per actor);
``purify_files_on_ray`` is the ``nrp purify`` job with its purification on a Ray cluster. Importing this
package does not import Ray; ``purify_files_on_ray`` does, and says how to install it when it is missing.
"""

from nrp_deploy.scale.actor import BatchPurifier, PurifierSettings, path_index
from nrp_deploy.scale.job import purify_files_on_ray

__all__ = ["BatchPurifier", "PurifierSettings", "path_index", "purify_files_on_ray"]
