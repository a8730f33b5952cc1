"""Data: offline datasets, batched augmentation and resumable tensor loaders.

``datasets`` reads the image sets (Fashion-MNIST, MNIST, digits, and CIFAR/SVHN/ImageNet from a user
directory, saying which files go where) and registers them by name; ``download`` fetches the public
ones with checksums when asked; ``loader`` is the seeded, resumable, shardable batch stream a search
and a training draw from (the DARTS split of the training set into a weight half and an alpha half);
``transforms`` augments a whole batch at once on its device; ``ptb`` is Penn Treebank for the
recurrent skeleton.
"""

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
