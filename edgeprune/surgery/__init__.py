"""Structural surgery: dead-neuron detection, grouping (torch-pruning), constant folding, removal, verification.

Public API: :func:`surgery`, :func:`surgery_checkpoint`, :class:`SurgeryResult`. Importing this package registers
the ``"surgery"`` arch-spec extension, so ``edgeprune.checkpoint.build_model`` rebuilds slim models.
"""

from ..checkpoint import register_arch_extension
from .core import SurgeryConfig, SurgeryResult, surgery, surgery_checkpoint
from .replay import replay

register_arch_extension("surgery", replay)

__all__ = ["SurgeryConfig", "SurgeryResult", "surgery", "surgery_checkpoint"]
