"""Exceptions users are expected to catch; each message names the file or argument that was wrong."""


class NRPDeployError(Exception):
    """Base class: every error raised on purpose by nrp_deploy."""


class CheckpointError(NRPDeployError):
    """A checkpoint cannot be read, or is not an NRP / NRP_resG state dict."""


class ModelNotFoundError(NRPDeployError):
    """A registry name whose weights are not on disk (the message says where to get them)."""


class ChecksumError(NRPDeployError):
    """A file's sha256 differs from the one recorded for it."""


class ImageError(NRPDeployError):
    """An image file that cannot be decoded or has an unsupported layout."""


class InputError(NRPDeployError):
    """An array handed to a purifier with the wrong dtype, shape, range or values."""


class BackendUnavailableError(NRPDeployError):
    """A backend that is not installed or cannot run on this machine (the message says what to install)."""


class StaleArtifactError(NRPDeployError):
    """An engine or ONNX artifact built from another source, tool version or GPU than the one at hand."""


class ExportError(NRPDeployError):
    """An export, precision conversion or its check failed, or its calibration data is missing or empty."""


class MetadataError(NRPDeployError):
    """An artifact's metadata sidecar (``<artifact>.json``) is missing, unreadable or malformed."""


class ModelError(NRPDeployError):
    """A model that cannot serve as a purifier: its inputs or outputs are not RGB images of the input's size,
    or it computes NaN or infinite values."""


class FidelityError(NRPDeployError):
    """An artifact whose recorded fidelity check FAILed; it is used only when the caller forces it."""
