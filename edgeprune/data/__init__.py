"""Datasets by name → deterministic train / validation / test splits, found on disk (never downloaded unasked)."""

from . import builtin  # noqa: F401  (registration side effects)
from ._registry import (
    DataBundle,
    TensorSplit,
    candidate_roots,
    get_dataset_entry,
    list_datasets,
    load_dataset,
    split_train_val,
    user_cache_dir,
)
from .loader import Batches

__all__ = [
    "Batches",
    "DataBundle",
    "TensorSplit",
    "candidate_roots",
    "get_dataset_entry",
    "list_datasets",
    "load_dataset",
    "split_train_val",
    "user_cache_dir",
]
