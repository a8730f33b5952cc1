"""Offline datasets, batched augmentation and resumable tensor loaders."""

from .datasets import (
    DATASETS,
    DatasetNotFoundError,
    ImageDataset,
    clear_cache,
    default_data_root,
    list_datasets,
    load_dataset,
    read_idx,
    register_dataset,
)
from .loader import InfiniteLoader, TensorLoader, search_split
from .transforms import Augment, cutout, normalize, random_crop, random_flip

__all__ = [
    "DATASETS",
    "Augment",
    "DatasetNotFoundError",
    "ImageDataset",
    "InfiniteLoader",
    "TensorLoader",
    "clear_cache",
    "cutout",
    "default_data_root",
    "list_datasets",
    "load_dataset",
    "normalize",
    "random_crop",
    "random_flip",
    "read_idx",
    "register_dataset",
    "search_split",
]
