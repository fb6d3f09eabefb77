"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's dataset classes.

``prepare_data`` makes the dataset readable before any training step. It unpacks the archives that lie in
``data_dir`` itself (MNIST's ``.gz`` files, CIFAR-10's ``.tar.gz``) and leaves only missing files to torchvision's
download, which skips files that are already there and pass its checksums.

Several runs often start at once on one fresh data folder (a parallel sweep, a SLURM array on a shared
filesystem). torchvision unpacks in place, so one run could read a file that another was still writing. Here
unpacking holds a file lock, and every unpacked file or folder appears through one atomic rename: a run sees
all of it or nothing. A data folder the runs may not write into (a shared, read-only copy) is never written to;
its archives are unpacked into a cache folder instead (``$LM_CACHE_DIR``, else ``~/.cache/lightning_micro``),
one per data folder.

Every error about the files is a :class:`DatasetError`, its message one line starting with ``data.data_dir:``.
Missing files that cannot be downloaded give :class:`DatasetNotFoundError`, which says where the files go. A
truncated or corrupt file gives :class:`CorruptDatasetFileError`, which names the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import shutil
import tarfile
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from filelock import FileLock

from lightning_micro.data.image_datamodule import ImageDataModule

# What a damaged archive raises while it is read; anything else (no space left, no permission) is not its fault.
ARCHIVE_DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError)


class DatasetError(Exception):
    """A problem with the dataset files; the message is one line that starts with ``data.data_dir:``."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset is not under ``data_dir`` and could not be downloaded."""


class CorruptDatasetFileError(DatasetError):
    """A dataset file is truncated or corrupt.

    Raised before torchvision reads it, because torchvision would fail with a message that names neither the
    file nor the fault (``invalid literal for int() with base 16: b''`` for a short MNIST file).
    """


def corrupt_file_error(path: Path, reason: str, remedy: str = "replace it") -> CorruptDatasetFileError:
    """The one-line error for a damaged file (built from one string, so it survives pickling across processes)."""
    return CorruptDatasetFileError(f"data.data_dir: {path.absolute()} is truncated/corrupt: {reason}; {remedy}")


def default_data_dir() -> str:
    """``$LM_DATA_DIR`` if set, else ``./data``."""
    return os.environ.get("LM_DATA_DIR", "data")


def default_cache_dir() -> Path:
    """``$LM_CACHE_DIR`` if set, else ``~/.cache/lightning_micro``."""
    return Path(os.environ.get("LM_CACHE_DIR") or Path.home() / ".cache" / "lightning_micro")


def unpack_cache_for(data_dir: Path) -> Path:
    """Where the archives of a read-only ``data_dir`` are unpacked.

    Named after the folder for people, and keyed by its absolute path so that two data folders (say two versions
    of one dataset, both called ``data``) never share unpacked files.
    """
    absolute = data_dir.resolve()
    key = hashlib.sha256(str(absolute).encode()).hexdigest()[:16]
    return default_cache_dir() / "unpacked" / f"{absolute.name or 'root'}-{key}"


def may_write_into(folder: Path) -> bool:
    """Whether runs may write into ``folder``, or create it (then its nearest existing parent decides).

    ``os.access`` says yes to root everywhere, so a folder whose mode lets no one write (a shared copy made
    read-only with chmod) counts as read-only for root as well: the mode states the owner's intent.
    """
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _staging_path(target: Path) -> Path:
    """A hidden name beside ``target``: same folder, so the final ``os.replace`` is a rename, which is atomic."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")


def idx_dims(name: str) -> int:
    """The number of dimensions an MNIST-format file holds, from its name (``...-idx3-ubyte`` holds 3)."""
    found = re.search(r"idx(\d)", name)
    if found is None:
        raise ValueError(f"{name!r} is not an idx file name (expected e.g. 'train-images-idx3-ubyte')")
    return int(found.group(1))


def idx_problem(header: bytes, size: int, dims: int) -> str | None:
    """What is wrong with an idx file of ``size`` bytes that starts with ``header``, or None if nothing is.

    The format (MNIST's) is a 4-byte magic number ``0x0000 08 <dims>`` (08: unsigned bytes), one big-endian
    4-byte length per dimension, then the values; so the header alone gives the exact size of a whole file.
    """
    expected_magic = 0x0800 | dims
    header_size = 4 * (1 + dims)
    if len(header) < 4:
        return f"only {size} bytes, shorter than a 4-byte magic number"
    magic = int.from_bytes(header[:4], "big")
    if magic != expected_magic:
        return f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (idx{dims} of unsigned bytes)"
    if len(header) < header_size:
        return f"only {size} bytes, shorter than its {header_size}-byte header"
    shape = [int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(1, dims + 1)]
    expected_size = header_size + math.prod(shape)
    if size != expected_size:
        return f"{size:,} bytes, but its header ({' x '.join(map(str, shape))} values) needs {expected_size:,}"
    return None


def read_idx_problem(path: Path, dims: int) -> str | None:
    """:func:`idx_problem` of a file on disk; reads only the header."""
    with open(path, "rb") as handle:
        header = handle.read(4 * (1 + dims))
    return idx_problem(header, path.stat().st_size, dims)


def unpack_gzip(source: Path, target: Path, dims: int) -> None:
    """Unpack the idx file ``source`` (``.gz``) into ``target``, which appears whole or not at all.

    Writes a staging file beside ``target``, checks it, then renames it: another run that looks at the same time
    sees no file (and waits for the lock) or the whole file, never part of one.

    Raises:
        CorruptDatasetFileError: naming ``source`` when it is truncated (gzip checks the length and the CRC at
            its end) or unpacks to something that is not a whole idx file.
    """
    staging = _staging_path(target)
    try:
        with gzip.open(source, "rb") as packed, open(staging, "xb") as unpacked:
            shutil.copyfileobj(packed, unpacked, 1 << 20)
        problem = read_idx_problem(staging, dims)
        if problem is not None:
            raise corrupt_file_error(source, f"it unpacks to {problem}")
        os.replace(staging, target)
    except ARCHIVE_DAMAGE as err:
        raise corrupt_file_error(source, f"{type(err).__name__}: {err}") from err
    finally:
        staging.unlink(missing_ok=True)


def extract_tar_gz(source: Path, target: Path) -> None:
    """Extract the folder ``target.name`` from the archive ``source`` into ``target``, whole or not at all.

    Extracts into a staging folder beside ``target`` and renames the folder into place (see :func:`unpack_gzip`).

    Raises:
        CorruptDatasetFileError: naming ``source`` when it is truncated, corrupt, or holds no such folder.
    """
    staging = _staging_path(target)
    # The "data" filter refuses members that would land outside the staging folder (Python >= 3.10.12).
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(source, "r:gz") as archive:
            archive.extractall(staging, **safe)
        if not (staging / target.name).is_dir():
            raise corrupt_file_error(source, f"it holds no {target.name}/ folder")
        os.replace(staging / target.name, target)
    except ARCHIVE_DAMAGE as err:
        raise corrupt_file_error(source, f"{type(err).__name__}: {err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class TorchvisionDataModule(ImageDataModule):
    """Base for the torchvision sets; subclasses set :attr:`dataset_class` and :attr:`expected_files`.

    Subclasses that know their archive format unpack it themselves by naming what torchvision reads
    (:meth:`unpacked_paths`), checking it (:meth:`check_unpacked`) and making it (:meth:`unpack`); the base
    leaves everything to torchvision, under the lock. The arguments not listed below are
    :class:`ImageDataModule`'s.

    Args:
        data_dir: folder that holds ``<DatasetName>/`` in torchvision's layout; must exist. Never written to
            when it is read-only: its archives are unpacked into ``$LM_CACHE_DIR`` (else
            ``~/.cache/lightning_micro``) instead.
        download: let torchvision fetch missing files (needs network).

    Raises:
        DatasetNotFoundError: from :meth:`prepare_data`, when files are missing and cannot be downloaded.
        CorruptDatasetFileError: from :meth:`prepare_data`, when a file is truncated or corrupt.
    """

    dataset_class: type = torchvision.datasets.MNIST
    expected_files: tuple[str, ...] = ()

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: Sequence[float] = (0.1307,),
        std: Sequence[float] = (0.3081,),
        num_workers: int = 0,
        download: bool = True,
        pad: int = 0,
    ) -> None:
        super().__init__(input_shape, num_classes, batch_size, val_size, split_seed, mean, std, num_workers, pad)
        data_dir = Path(default_data_dir() if data_dir is None else data_dir)
        if not data_dir.is_dir():
            raise ValueError(
                f"data_dir {str(data_dir)!r} is not an existing directory (resolved: {data_dir.resolve()}). "
                "Create it, or point data.data_dir or the LM_DATA_DIR environment variable at the folder "
                f"that holds {self.dataset_class.__name__}/"
            )
        self.data_dir = data_dir
        self.download = download

    @property
    def dataset_folder(self) -> Path:
        return self.data_dir / self.dataset_class.__name__

    def unpacked_paths(self, root: Path) -> list[Path]:
        """The files or folders torchvision reads under ``root`` (none known: torchvision decides alone)."""
        return []

    def check_unpacked(self, path: Path) -> None:
        """Raise :class:`CorruptDatasetFileError` if ``path``, one of :meth:`unpacked_paths`, is damaged."""

    def unpack(self, path: Path) -> None:
        """Make ``path``, one of :meth:`unpacked_paths`, from its archive in ``data_dir`` if that is there."""

    def unpacked_root(self) -> Path:
        """The root torchvision reads from: where the set is unpacked, else ``data_dir`` if writable, else the cache.

        A function of what is on disk, so ``prepare_data`` and every later ``load_split`` (in any process) agree
        on it; once the set is unpacked, a change of the folder's permissions does not change the answer.
        """
        cache = unpack_cache_for(self.data_dir)
        for root in (self.data_dir, cache):
            paths = self.unpacked_paths(root)
            if paths and all(path.exists() for path in paths):
                return root
        paths = self.unpacked_paths(self.data_dir)
        if may_write_into(self.data_dir) and (not paths or may_write_into(paths[0].parent)):
            return self.data_dir  # the lock file goes into data_dir, the unpacked files beside their archives
        return cache

    def _is_unpacked(self, root: Path) -> bool:
        """Whether all of :meth:`unpacked_paths` are there; each one there is checked (cheaply) on the way."""
        paths = self.unpacked_paths(root)
        present = [path for path in paths if path.exists()]
        for path in present:
            self.check_unpacked(path)
        return bool(paths) and len(present) == len(paths)

    def _lock(self, root: Path) -> FileLock:
        """The lock that one run holds while it unpacks or downloads into ``root``; it lives in ``root``."""
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatasetError(
                f"data.data_dir: {self.data_dir.resolve()} is read-only and its cache folder {root} cannot be "
                f"created ({type(err).__name__}: {err}); set LM_CACHE_DIR to a writable folder."
            ) from err
        return FileLock(root / f".{self.dataset_class.__name__}.lock")

    def _open(self, root: Path, train: bool, download: bool):
        return self.dataset_class(str(root), train=train, download=download)

    def prepare_data(self) -> None:
        root = self.unpacked_root()
        try:
            if self._is_unpacked(root):
                return  # the common case: no lock, no writes
        except CorruptDatasetFileError:
            pass  # perhaps another run's torchvision download, still writing: decide under the lock
        with self._lock(root):
            for path in self.unpacked_paths(root):
                if not path.exists():  # another run may have unpacked it while this one waited
                    self.unpack(path)
            if not self._is_unpacked(root):
                self._download(root)

    def _download(self, root: Path) -> None:
        """torchvision's own download (and check) of whatever is still missing."""
        try:
            self._open(root, train=True, download=self.download)
        except (RuntimeError, OSError) as err:
            files = ", ".join(self.expected_files)
            raise DatasetNotFoundError(
                f"data.data_dir: {self.dataset_class.__name__} is not under {self.data_dir.resolve()} and "
                f"could not be downloaded ({type(err).__name__}: {str(err).splitlines()[0]}). "
                f"Put its files ({files}) into {self.dataset_folder.resolve()}/ in torchvision's layout, or "
                "point data.data_dir / LM_DATA_DIR at the folder that holds them."
            ) from err

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = self._open(self.unpacked_root(), train, download=False)
        images = torch.as_tensor(np.asarray(dataset.data))
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # HWC -> CHW
        return images.float().div(255.0), torch.as_tensor(np.asarray(dataset.targets)).long()


class MNISTFormatDataModule(TorchvisionDataModule):
    """Sets in MNIST's format: four gzip'd idx files in ``<root>/<Name>/raw/``, which torchvision reads unpacked.

    Unpacks them with :func:`unpack_gzip` under the names torchvision expects, so torchvision finds them and
    neither unpacks nor downloads anything.
    """

    def _raw_folder(self, root: Path) -> Path:
        return root / self.dataset_class.__name__ / "raw"

    def unpacked_paths(self, root: Path) -> list[Path]:
        return [self._raw_folder(root) / name.removesuffix(".gz") for name in self.expected_files]

    def _archive_of(self, path: Path) -> Path:
        return self._raw_folder(self.data_dir) / f"{path.name}.gz"

    def check_unpacked(self, path: Path) -> None:
        problem = read_idx_problem(path, idx_dims(path.name))
        if problem is not None:
            archive = self._archive_of(path)
            remedy = f"delete it to unpack it again from {archive.absolute()}" if archive.is_file() else "replace it"
            raise corrupt_file_error(path, problem, remedy)

    def unpack(self, path: Path) -> None:
        archive = self._archive_of(path)
        if archive.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            unpack_gzip(archive, path, idx_dims(path.name))


class MNISTDataModule(MNISTFormatDataModule):
    """MNIST: 60,000 training and 10,000 test 28x28 grey digits."""

    dataset_class = torchvision.datasets.MNIST
    expected_files = tuple(name for name, _ in torchvision.datasets.MNIST.resources)


class FashionMNISTDataModule(MNISTFormatDataModule):
    """Fashion-MNIST: MNIST's format and sizes, ten kinds of clothing."""

    dataset_class = torchvision.datasets.FashionMNIST
    expected_files = tuple(name for name, _ in torchvision.datasets.FashionMNIST.resources)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000 training and 10,000 test 32x32 colour images.

    torchvision reads the folder ``cifar-10-batches-py/`` that ``cifar-10-python.tar.gz`` holds; both lie directly
    in ``data_dir``. The folder is extracted with :func:`extract_tar_gz`; torchvision checks each batch's MD5
    whenever it opens the set.
    """

    dataset_class = torchvision.datasets.CIFAR10
    expected_files = ("cifar-10-python.tar.gz",)

    @property
    def dataset_folder(self) -> Path:
        return self.data_dir

    def unpacked_paths(self, root: Path) -> list[Path]:
        return [root / self.dataset_class.base_folder]

    def check_unpacked(self, path: Path) -> None:
        cls = self.dataset_class
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            archive = self.data_dir / cls.filename
            remedy = f"delete it to extract it again from {archive.absolute()}" if archive.is_file() else "replace it"
            raise corrupt_file_error(path, f"it lacks {', '.join(missing)}", remedy)

    def unpack(self, path: Path) -> None:
        archive = self.data_dir / self.dataset_class.filename
        if archive.is_file():
            extract_tar_gz(archive, path)

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        num_workers: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(
            data_dir, input_shape, num_classes, batch_size, val_size, split_seed, mean, std, num_workers, download
        )
