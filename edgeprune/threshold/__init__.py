"""Thresholding (SeReNe Sec. IV-B, LOBSTER Sec. 4.2): the most pruning whose validation loss stays within
(1 + TWT)·L̂ — over single parameters by a global magnitude T (eq. 22) or over whole coupled neurons — found by
bisection. The masks themselves and their pinning (eq. 23) live in :mod:`edgeprune.masks`, re-exported here."""

from ..masks import apply_masks_, count_alive, full_masks, masks_from_zeros, pin_, threshold_masks, zero_pinned_grads_
from .bisection import find_threshold, largest_admissible
from .neurons import NeuronGroup, find_neuron_threshold, neuron_groups

__all__ = ["NeuronGroup", "apply_masks_", "count_alive", "find_neuron_threshold", "find_threshold", "full_masks",
           "largest_admissible", "masks_from_zeros", "neuron_groups", "pin_", "threshold_masks", "zero_pinned_grads_"]
