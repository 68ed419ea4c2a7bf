"""The one exception hierarchy of edgeprune.

Every error a user can cause derives from :class:`EdgepruneError`; the CLI turns it into one line and exit code 1.
Messages say what is wrong and what to do about it.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """Base class of every error edgeprune raises on purpose."""


class ConfigError(EdgepruneError, ValueError):
    """An option or configuration value is invalid."""


class ModelError(EdgepruneError):
    """Unknown architecture, or a model that does not fit the operation."""


class CheckpointError(EdgepruneError):
    """A checkpoint cannot be read safely or does not match its architecture."""


class DatasetError(EdgepruneError):
    """A dataset cannot be found or read."""


class SurgeryError(EdgepruneError):
    """Structural surgery would change the model's function, or cannot be done."""


class ExportError(EdgepruneError):
    """An export failed or its artifact does not match the PyTorch model."""


class BenchError(EdgepruneError):
    """A benchmark cannot run or its input is invalid."""


class QuantizationGateError(EdgepruneError):
    """An INT8 model lost more test accuracy than allowed; the float model stays the artifact."""
