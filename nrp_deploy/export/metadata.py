"""Deprecated: the sidecar format moved to ``nrp_deploy.artifacts.metadata`` (torch-free, read by the runtime
and written by export); every name is still handed out here, with a ``DeprecationWarning``."""

from nrp_deploy.artifacts import metadata as _metadata
from nrp_deploy.deprecation import moved_names

__getattr__ = moved_names(__name__, _metadata)
