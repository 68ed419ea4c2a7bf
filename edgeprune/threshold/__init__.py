"""Thresholding (SeReNe Sec. IV-B, LOBSTER Sec. 4.2): the largest global magnitude T whose pruning keeps the
validation loss within (1 + TWT)·L̂, and the masks that pin pruned parameters to zero (SeReNe eq. 23)."""

from .bisection import find_threshold, largest_admissible
from .masks import (
    apply_masks_,
    count_alive,
    full_masks,
    magnitude_masks,
    masks_from_zeros,
    pin_,
    zero_pinned_grads_,
)

__all__ = ["apply_masks_", "count_alive", "find_threshold", "full_masks", "largest_admissible", "magnitude_masks",
           "masks_from_zeros", "pin_", "zero_pinned_grads_"]
