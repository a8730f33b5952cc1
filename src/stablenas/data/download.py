"""Fetching the public image datasets into a cache directory, checked against published checksums.

``stablenas data download NAME`` (or ``STABLENAS_DOWNLOAD=1`` on first use) fetches the files the
authors publish, verifies their MD5 (the digests torchvision's dataset classes list for the same
URLs), and lays them out as :mod:`stablenas.data.datasets` reads them. A file is written to
``NAME.part`` in the target directory and renamed only once its size and checksum match, so a killed
download never leaves a file that passes; a partial ``.part`` file is discarded and the download
starts over (no HTTP range requests: the largest file is under 200 MB, and a fresh start never
splices two versions of a file). A file fetched by hand into the target directory is verified and
used as it is. One process downloads into a directory at a time (an ``fcntl`` lock), so torchrun's
ranks do not race.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DownloadError
from ..progress import progress_enabled

DOWNLOAD_ENV = "STABLENAS_DOWNLOAD"
TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One published file: where it is and the MD5 of its bytes."""

    url: str
    md5: str

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


@dataclass(frozen=True)
class Source:
    """A downloadable dataset: its files, the directory under the cache they go to, and the files
    the loader needs (relative to the cache), which say whether it is there already.
    ``extract`` names the tarball members' top directory when the files are an archive."""

    files: tuple[Remote, ...]
    subdir: str
    ready: tuple[str, ...]
    extract: bool = False


_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(base: str, md5s: tuple[str, ...]) -> tuple[Remote, ...]:
    return tuple(Remote(f"{base}{name}.gz", md5) for name, md5 in zip(_IDX, md5s, strict=True))


SOURCES: dict[str, Source] = {
    "cifar10": Source((Remote(_TORONTO + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
                      "", tuple(f"cifar-10-batches-py/{f}" for f in
                                (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")), extract=True),
    "cifar100": Source((Remote(_TORONTO + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
                       "", ("cifar-100-python/train", "cifar-100-python/test"), extract=True),
    "svhn": Source((Remote(_SVHN + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
                    Remote(_SVHN + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")),
                   "svhn", ("svhn/train_32x32.mat", "svhn/test_32x32.mat")),
    "fashion-mnist": Source(_idx(_FASHION, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
                            "fashion-mnist", tuple(f"fashion-mnist/{f}.gz" for f in _IDX)),
    "mnist": Source(_idx(_MNIST, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                  "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
                    "mnist", tuple(f"mnist/{f}.gz" for f in _IDX)),
}
# datasets read from another one's files
_SAME_FILES = {"fashion-mnist-14": "fashion-mnist"}

MANUAL = {
    "imagenet": "imagenet: not downloaded (its licence needs an account at https://image-net.org): download "
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar there; stablenas reads no ImageNet files "
                "itself, so register a loader for them with a dataset plug-in (docs/plugins.md) and pass their "
                "directory as --data-root",
    "nb201": "nb201: NAS-Bench-201's table is not downloaded (it is hosted on Google Drive): fetch "
             "NAS-Bench-201-v1_1-096897.pth (or v1_0-e61699.pth) as the README of "
             "https://github.com/D-X-Y/NAS-Bench-201 says, put it anywhere, and name it with "
             "$STABLENAS_NB201_FILE or the config key evaluation.nb201_file",
}


def cache_dir() -> Path:
    """Where downloads go: ``$STABLENAS_DATA_ROOT``, else ``$XDG_CACHE_HOME/stablenas/data`` (XDG's
    default ``~/.cache``)."""
    from .datasets import DATA_ROOT_ENV

    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().absolute() / "stablenas" / "data"


def auto_download() -> bool:
    """Whether a missing dataset is fetched on first use (``STABLENAS_DOWNLOAD=1``)."""
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def downloadable() -> list[str]:
    """Names ``download`` fetches, then those it only explains."""
    return [*SOURCES, *MANUAL]


def source_for(name: str) -> Source | None:
    """The source of a registered dataset's files (None: not downloadable, e.g. digits)."""
    key = _SAME_FILES.get(name, name)
    return SOURCES.get(key)


def is_ready(source: Source, root: Path) -> bool:
    return all((root / f).is_file() for f in source.ready)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One downloader per directory (the others wait, then find the files there)."""
    import fcntl

    with open(root / ".download.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch(remote: Remote, dest: Path, *, progress: bool | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download ``remote`` to ``dest`` via ``dest.part``: renamed only when complete and its MD5 is
    the published one; on any failure the partial file is removed and :class:`DownloadError` raised."""
    if dest.is_file():
        if _md5(dest) == remote.md5:
            return dest
        raise DownloadError(f"{dest} exists but its MD5 is not the published {remote.md5}: remove it and "
                            "run the download again")
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)  # a killed download's remains: start over
    host = urllib.parse.urlparse(remote.url).netloc
    h, got, total = hashlib.md5(usedforsecurity=False), 0, None
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as resp, open(part, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                      disable=not progress_enabled(progress), file=sys.stderr, dynamic_ncols=True) as b:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    b.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except urllib.error.HTTPError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url}: the server answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot reach {host} ({_reason(e.reason)}): offline or the server is down; "
                            f"fetch {remote.url} by hand into {dest.parent}, or try again later") from None
    except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url}: the connection broke mid-file ({_reason(e)}); nothing was kept, "
                            "run the download again") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if total is not None and got != total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url}: truncated, {got} of {total} bytes arrived; run the download again")
    if h.hexdigest() != remote.md5:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url}: MD5 {h.hexdigest()} is not the published {remote.md5} "
                            f"({got} bytes; a changed or damaged file): nothing was kept")
    os.replace(part, dest)
    return dest


def _reason(e: object) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _extract(archive: Path, root: Path) -> None:
    """Unpack a verified tarball next to it through a temporary directory, moving each file into
    place (whole files only), then remove the archive."""
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DownloadError(f"{archive}: cannot unpack ({_reason(e)})") from None
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                target = root / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink()


def download(name: str, root: Path | str | None = None, *, progress: bool | None = None) -> Path:
    """Fetch dataset ``name`` into ``root`` (default :func:`cache_dir`) unless its files are there;
    return ``root``. ImageNet and NAS-Bench-201 raise a :class:`DownloadError` saying what to fetch."""
    from ..registry import DATASETS

    root = Path(root).expanduser().absolute() if root is not None else cache_dir()
    key = name.strip().lower().replace("_", "-")
    if key in MANUAL:
        raise DownloadError(MANUAL[key])
    try:
        key = DATASETS.canonical(name)
    except (KeyError, ValueError):
        key = None
    source = source_for(key) if key is not None else None
    if source is None:
        raise DownloadError(f"{name}: not downloadable; choose one of {', '.join(downloadable())}")
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if is_ready(source, root):
            return root
        target = root / source.subdir
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob(".extract-*"):  # a killed unpacking's remains (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        for remote in source.files:
            path = fetch(remote, target / remote.filename, progress=progress)
            if source.extract:
                _extract(path, target)
        if not is_ready(source, root):
            missing = [f for f in source.ready if not (root / f).is_file()]
            raise DownloadError(f"{name}: the downloaded files lack {', '.join(missing)} under {root}")
    return root


__all__ = ["DOWNLOAD_ENV", "MANUAL", "SOURCES", "DownloadError", "Remote", "Source", "auto_download", "cache_dir",
           "download", "downloadable", "fetch", "is_ready", "source_for"]
