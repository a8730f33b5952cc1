"""``stablenas data download`` and the download on first use, against a local HTTP server.

The server (127.0.0.1, port 0) serves files built here in the published formats: a CIFAR-10
python tarball with the real directory layout and pickle structure, gzipped Fashion-MNIST idx
files. The URL/MD5 table points at it; everything else (HTTP client, checksum, rename, unpacking,
the loaders' search of the cache) is the code a user's download runs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from stablenas.config import load_config
from stablenas.data import download as dl
from stablenas.data.datasets import clear_cache, load_dataset
from stablenas.errors import DatasetNotFoundError
from stablenas.registry import SKELETONS
from stablenas.spaces.catalog import get_space

# ------------------------------------------------------------------------------------ files built here

RNG = np.random.default_rng(0)
CIFAR_PER_BATCH, CIFAR_TEST = 4, 6


def _cifar_tarball() -> tuple[bytes, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """cifar-10-python.tar.gz in miniature: cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}, each a pickled dict with bytes keys, b'data' (N, 3072) uint8 (R, G, B planes)."""
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, obj: object) -> None:
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            n = CIFAR_TEST if name == "test_batch" else CIFAR_PER_BATCH
            data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = RNG.integers(0, 10, n).tolist()
            splits[name] = (data, np.asarray(labels))
            add(name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                       b"filenames": [f"img_{i}.png".encode() for i in range(n)]})
        add("batches.meta", {b"num_cases_per_batch": CIFAR_PER_BATCH, b"num_vis": 3072,
                             b"label_names": [f"class{i}".encode() for i in range(10)]})
    return buf.getvalue(), splits


def _idx(arr: np.ndarray) -> bytes:
    """An IDX file (uint8 payload), gzipped as the Fashion-MNIST release ships it."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def _fashion_files() -> tuple[dict[str, bytes], dict[str, tuple[np.ndarray, np.ndarray]]]:
    files, splits = {}, {}
    for prefix, split, n in (("train", "train", 12), ("t10k", "test", 5)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, n, dtype=np.uint8)
        files[f"{prefix}-images-idx3-ubyte.gz"] = _idx(x)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx(y)
        splits[split] = (x, y)
    return files, splits


CIFAR_TGZ, CIFAR_SPLITS = _cifar_tarball()
FASHION_FILES, FASHION_SPLITS = _fashion_files()

# ------------------------------------------------------------------------------------ the local server


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; ``server.modes[path]`` makes it misbehave: 'truncate' sends
    half the body and closes, 'gone' sends half and resets the connection."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        mode = self.server.modes.get(self.path, "ok")  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "ok":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        if mode == "gone":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.modes = {}, {}
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A user's machine: no $STABLENAS_DATA_ROOT, the XDG cache under tmp_path, an empty cwd."""
    monkeypatch.delenv("STABLENAS_DATA_ROOT", raising=False)
    monkeypatch.delenv(dl.DOWNLOAD_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    clear_cache()
    yield tmp_path / "xdg" / "stablenas" / "data"
    clear_cache()


def _serve(monkeypatch, httpd, dataset: str, files: dict[str, bytes], md5s: dict[str, str] | None = None) -> None:
    """Put ``files`` on the server and point ``dataset``'s table entry at them."""
    port = httpd.server_address[1]
    for name, body in files.items():
        httpd.files[f"/{name}"] = body
    remotes = tuple(dl.Remote(f"http://127.0.0.1:{port}/{name}",
                              (md5s or {}).get(name, hashlib.md5(body).hexdigest())) for name, body in files.items())
    monkeypatch.setitem(dl.SOURCES, dataset, dataclasses.replace(dl.SOURCES[dataset], files=remotes))


def _nothing_passes(cache: Path) -> None:
    """No dataset file (and no .part or archive) is left: only the lock file may remain."""
    left = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []
    assert left in ([], [".download.lock"]), left
    assert not dl.is_ready(dl.SOURCES["cifar10"], cache)


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------ tests


def test_cifar10_download_then_search_data_reads_it(server, cache, monkeypatch, capsys):
    _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": CIFAR_TGZ})
    code, out, err = run_cli(["data", "download", "cifar10", "--no-progress"], capsys)
    assert code == 0, err
    assert f"ready in {cache}" in out
    assert not (cache / "cifar-10-python.tar.gz").exists()  # unpacked, archive removed
    assert (cache / "cifar-10-batches-py" / "batches.meta").is_file()

    # the user's path: no data.root, the loader finds the XDG cache by itself
    cfg = load_config("quickstart", ["data.dataset=cifar10", "data.subset=8", "data.batch_size=2",
                                     "data.eval_batch_size=4", "device=cpu"])
    assert cfg.data.root is None
    data = SKELETONS[get_space(cfg.space).skeleton].search_data(cfg, torch.device("cpu"))
    assert (data.num_classes, data.in_channels, data.n_train) == (10, 3, 4)
    xb, yb = next(iter(data.train_loader))[:2]
    assert tuple(xb.shape) == (2, 3, 32, 32) and yb.dtype == torch.int64

    train = load_dataset("cifar10", "train")
    want_x = np.concatenate([CIFAR_SPLITS[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    want_y = np.concatenate([CIFAR_SPLITS[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert torch.equal(train.x, torch.from_numpy(want_x)) and torch.equal(train.y, torch.from_numpy(want_y))
    test = load_dataset("cifar10", "test")
    assert torch.equal(test.x, torch.from_numpy(CIFAR_SPLITS["test_batch"][0].reshape(-1, 3, 32, 32)))

    code, out, _ = run_cli(["data", "download", "cifar10"], capsys)  # there already: nothing fetched
    assert code == 0 and "ready in" in out


def test_wrong_checksum_leaves_nothing(server, cache, monkeypatch, capsys):
    _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": CIFAR_TGZ},
           md5s={"cifar-10-python.tar.gz": "0" * 32})
    line = _one_error_line(*run_cli(["data", "download", "cifar10", "--no-progress"], capsys)[::2])
    assert "MD5" in line and "0" * 32 in line and hashlib.md5(CIFAR_TGZ).hexdigest() in line
    _nothing_passes(cache)


@pytest.mark.parametrize("mode", ["truncate", "gone"])
def test_broken_transfer_leaves_nothing_and_restarts(server, cache, monkeypatch, capsys, mode):
    _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": CIFAR_TGZ})
    server.modes["/cifar-10-python.tar.gz"] = mode
    line = _one_error_line(*run_cli(["data", "download", "cifar10", "--no-progress"], capsys)[::2])
    # a reset may reach the client before or after the half it was sent: either line is right
    assert (f"truncated, {len(CIFAR_TGZ) // 2} of {len(CIFAR_TGZ)} bytes" in line
            or (mode == "gone" and "connection broke mid-file" in line)), line
    _nothing_passes(cache)
    server.modes.clear()  # the server is back: the same command starts over and succeeds
    code, _, err = run_cli(["data", "download", "cifar10", "--progress"], capsys)
    assert code == 0, err
    assert "cifar-10-python.tar.gz" in err  # the bar, on stderr
    assert dl.is_ready(dl.SOURCES["cifar10"], cache)


def test_offline_is_one_error_line(cache, monkeypatch, capsys):
    url = _refused_url("cifar-10-python.tar.gz")
    port = url.split(":")[2].split("/")[0]
    monkeypatch.setitem(dl.SOURCES, "cifar10", dataclasses.replace(dl.SOURCES["cifar10"],
                                                                     files=(dl.Remote(url, "0" * 32),)))
    line = _one_error_line(*run_cli(["data", "download", "cifar10", "--no-progress"], capsys)[::2])
    assert f"cannot reach 127.0.0.1:{port}" in line and "offline" in line
    _nothing_passes(cache)


def _refused_url(name: str) -> str:
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{name}"


def test_killed_download_remains_are_discarded(server, cache, monkeypatch, capsys):
    _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": CIFAR_TGZ})
    cache.mkdir(parents=True)
    (cache / "cifar-10-python.tar.gz.part").write_bytes(CIFAR_TGZ[:1000])  # a download killed mid-file
    (cache / ".extract-killed").mkdir()  # an unpacking killed midway
    with pytest.raises(DatasetNotFoundError, match="stablenas data download cifar10"):
        load_dataset("cifar10", "train")
    code, _, err = run_cli(["data", "download", "cifar10", "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in cache.iterdir()) == [".download.lock", "cifar-10-batches-py"]


def test_file_fetched_by_hand_is_verified_and_used_offline(cache, monkeypatch, capsys):
    url = _refused_url("cifar-10-python.tar.gz")
    monkeypatch.setitem(dl.SOURCES, "cifar10", dataclasses.replace(
        dl.SOURCES["cifar10"], files=(dl.Remote(url, hashlib.md5(CIFAR_TGZ).hexdigest()),)))
    cache.mkdir(parents=True)
    (cache / "cifar-10-python.tar.gz").write_bytes(CIFAR_TGZ)
    code, _, err = run_cli(["data", "download", "cifar10", "--no-progress"], capsys)
    assert code == 0, err
    assert len(load_dataset("cifar10", "test")) == CIFAR_TEST


def test_http_error_is_one_error_line(server, cache, monkeypatch, capsys):
    _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": CIFAR_TGZ})
    server.files.clear()  # the server answers 404
    line = _one_error_line(*run_cli(["data", "download", "cifar10", "--no-progress"], capsys)[::2])
    assert "HTTP 404" in line
    _nothing_passes(cache)


def test_fashion_mnist_downloads_on_first_use_only_when_asked(server, cache, tmp_path, monkeypatch):
    _serve(monkeypatch, server, "fashion-mnist", FASHION_FILES)
    root = tmp_path / "fm"
    with pytest.raises(DatasetNotFoundError, match="stablenas data download fashion-mnist --data-root"):
        load_dataset("fashion-mnist", "train", root)
    assert not root.exists() or not any(root.iterdir())
    monkeypatch.setenv(dl.DOWNLOAD_ENV, "1")
    clear_cache()
    for split in ("train", "test"):
        ds = load_dataset("fashion-mnist", split, root)
        x, y = FASHION_SPLITS[split]
        assert torch.equal(ds.x, torch.from_numpy(x[:, None]))
        assert torch.equal(ds.y, torch.from_numpy(y.astype(np.int64)))
    assert sorted(p.name for p in (root / "fashion-mnist").iterdir()) == sorted(FASHION_FILES)


def test_manual_datasets_say_what_to_fetch(cache, capsys):
    line = _one_error_line(*run_cli(["data", "download", "imagenet"], capsys)[::2])
    assert "image-net.org" in line
    line = _one_error_line(*run_cli(["data", "download", "nb201"], capsys)[::2])
    assert "NAS-Bench-201-v1_1-096897.pth" in line and "STABLENAS_NB201_FILE" in line
    line = _one_error_line(*run_cli(["data", "download", "digits"], capsys)[::2])
    assert "cifar10, cifar100, svhn, fashion-mnist, mnist" in line
    assert not cache.exists()


def test_existing_file_with_other_bytes_is_kept(server, cache, tmp_path, monkeypatch, capsys):
    _serve(monkeypatch, server, "fashion-mnist", FASHION_FILES)
    root = tmp_path / "fm"
    (root / "fashion-mnist").mkdir(parents=True)
    mine = root / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    mine.write_bytes(b"the user's own file")
    line = _one_error_line(*run_cli(["data", "download", "fashion-mnist", "--data-root", root, "--no-progress"],
                                    capsys)[::2])
    assert str(mine) in line and "remove it" in line
    assert mine.read_bytes() == b"the user's own file"


def test_search_data_root_option_sets_data_root(tmp_path, capsys):
    code, out, err = run_cli(["search", "quickstart", "--data-root", tmp_path, "--print-config"], capsys)
    assert code == 0, err
    assert f"root: {tmp_path}" in out
    assert os.path.isabs(str(tmp_path))
