"""edgeprune: SeReNe neuron pruning, exact structural surgery, export and on-device benchmarks for PyTorch models."""

__version__ = "0.1.0"

from .errors import EdgepruneError  # noqa: E402

__all__ = ["EdgepruneError", "__version__"]
