"""TIMIT phone sets (61 / 48 / 39), the Kaldi folding map, and the label vocabulary.

The map is the data file ``resources/phones.61-48-39.map`` (Kaldi ``egs/timit/s5``): every one of
the 61 TIMIT labels folds to one of 48 training phones and one of 39 scoring phones, except the
glottal stop ``q``, which is deleted. Models train on 61 (60 after deleting ``q``) or 48 phones and
are scored on 39 (:mod:`hardalign.data.scoring`).

:class:`Vocabulary` is the label <-> id table every speech model uses: id 0 is reserved for
padding (and doubles as the CTC blank), the symbols take ids ``1..n`` and the end-of-sequence
label is ``eos_id = n + 1``; ``len(vocab) = n + 2`` is the size of an output softmax that covers
blank/padding, every symbol and EOS.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

__all__ = [
    "PHONE_SETS",
    "Vocabulary",
    "fold_phones",
    "load_speaker_list",
    "phone_map",
    "phone_set",
]

#: Names of the supported phone sets.
PHONE_SETS = (61, 48, 39)

_DELETED = "q"


def _resource_text(name: str) -> str:
    return resources.files("hardalign.data").joinpath("resources", name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _map_rows() -> tuple[tuple[str, ...], ...]:
    rows = []
    for line in _resource_text("phones.61-48-39.map").splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(tuple(line.split()))
    return tuple(rows)


@lru_cache(maxsize=None)
def phone_map(target: int = 39) -> dict[str, str | None]:
    """The folding map from the 61 TIMIT labels to ``target`` (61, 48 or 39) phones.

    Args:
        target: size of the phone set to fold to.

    Returns:
        dict from each of the 61 labels to its folded label; ``q`` maps to ``None`` (deleted).

    Raises:
        ValueError: ``target`` is not one of :data:`PHONE_SETS`.

    Example:
        >>> m = phone_map(39)
        >>> len(m), m["ao"], m["pcl"], m["q"]
        (61, 'aa', 'sil', None)
    """
    if target not in PHONE_SETS:
        raise ValueError(f"phone set must be one of {PHONE_SETS}, got {target!r}")
    column = {61: 0, 48: 1, 39: 2}[target]
    return {row[0]: (row[column] if len(row) > 1 else None) for row in _map_rows()}


@lru_cache(maxsize=None)
def phone_set(size: int = 61) -> tuple[str, ...]:
    """The labels of a phone set, sorted; the 61-label set includes ``q``.

    Example:
        >>> len(phone_set(61)), len(phone_set(48)), len(phone_set(39))
        (61, 48, 39)
    """
    return tuple(sorted({p for p in phone_map(size).values() if p is not None} | ({_DELETED} if size == 61 else set())))


def fold_phones(phones: Iterable[str], target: int = 39, *, merge_sil: bool = False) -> list[str]:
    """Fold raw TIMIT labels to a smaller set, deleting ``q``.

    Labels already in the target set pass through unchanged, so folding is idempotent (a 39-phone
    hypothesis can be folded "again" before scoring).

    Args:
        phones: TIMIT labels (61-set, or already folded to 48 / 39).
        target: 61, 48 or 39.
        merge_sil: merge runs of adjacent ``sil`` into one (off by default: the Kaldi policy
            scores every ``sil``).

    Returns:
        the folded label sequence.

    Raises:
        ValueError: a label is in neither the 61-set nor the target set.

    Example:
        >>> fold_phones(["h#", "q", "ix", "pcl", "p", "h#"])
        ['sil', 'ih', 'sil', 'p', 'sil']
        >>> fold_phones(["pcl", "pau", "p"], merge_sil=True)
        ['sil', 'p']
    """
    table = phone_map(target)
    known = set(phone_set(target))
    out: list[str] = []
    for p in phones:
        if p in table:
            folded = table[p]
        elif p in known:
            folded = p
        elif target != 61 and p in phone_set(48):
            # a 48-set label folded on to 39 (vcl/cl/epi -> sil, ix -> ih, ...)
            folded = _fold_48_to_39()[p]
        else:
            raise ValueError(f"unknown phone label {p!r} (not in the 61-phone TIMIT set or the {target}-phone set)")
        if folded is None:
            continue
        if merge_sil and folded == "sil" and out and out[-1] == "sil":
            continue
        out.append(folded)
    return out


@lru_cache(maxsize=None)
def _fold_48_to_39() -> dict[str, str]:
    return {row[1]: row[2] for row in _map_rows() if len(row) > 1}


def load_speaker_list(name: str) -> tuple[str, ...]:
    """A speaker list shipped with the package: ``"dev"`` (50 speakers) or ``"test"`` (24, core test).

    Example:
        >>> len(load_speaker_list("dev")), load_speaker_list("test")[0]
        (50, 'mdab0')
    """
    if name not in ("dev", "test"):
        raise ValueError(f"speaker list must be 'dev' or 'test', got {name!r}")
    text = _resource_text(f"{name}_speakers.txt")
    return tuple(w for line in text.splitlines() if not line.startswith("#") for w in line.split())


class Vocabulary:
    """Label <-> id table: 0 = padding / CTC blank, symbols ``1..n``, EOS ``n + 1``.

    Args:
        symbols: the output symbols in id order (ids start at 1).

    Attributes:
        symbols: tuple of the symbols.
        pad_id: 0 (also the CTC blank).
        blank_id: 0.
        eos_id: ``len(symbols) + 1``.

    Example:
        >>> v = Vocabulary.phones(39)
        >>> len(v), v.pad_id, v.eos_id
        (41, 0, 40)
        >>> v.encode(["sil", "aa"]), v.decode(v.encode(["sil", "aa"]) + [v.eos_id, 0])
        ([31, 1], ['sil', 'aa'])
    """

    pad_id = 0
    blank_id = 0

    def __init__(self, symbols: Sequence[str]):
        symbols = tuple(symbols)
        if len(set(symbols)) != len(symbols):
            raise ValueError("vocabulary symbols must be unique")
        if not symbols:
            raise ValueError("vocabulary needs at least one symbol")
        self.symbols = symbols
        self._ids = {s: i + 1 for i, s in enumerate(symbols)}
        self.eos_id = len(symbols) + 1

    @classmethod
    def phones(cls, size: int = 61) -> "Vocabulary":
        """The phone vocabulary for training on ``size`` phones (61 means the 60 left after deleting ``q``)."""
        return cls([p for p in phone_set(size) if p != _DELETED])

    def __len__(self) -> int:
        return len(self.symbols) + 2

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.symbols == self.symbols

    def __hash__(self) -> int:
        return hash(self.symbols)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self.symbols)} symbols, pad/blank=0, eos={self.eos_id})"

    def id(self, symbol: str) -> int:
        """The id of one symbol (KeyError naming the symbol when unknown)."""
        try:
            return self._ids[symbol]
        except KeyError:
            raise KeyError(f"symbol {symbol!r} is not in the vocabulary of {len(self.symbols)} symbols") from None

    def encode(self, symbols: Iterable[str]) -> list[int]:
        """Symbols to ids (no EOS appended)."""
        return [self.id(s) for s in symbols]

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> list[str]:
        """Ids to symbols: padding/blank ids are skipped, decoding stops at EOS (by default)."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                if stop_at_eos:
                    break
                continue
            if i == self.pad_id:
                continue
            if not 1 <= i <= len(self.symbols):
                raise ValueError(f"id {i} is outside the vocabulary (0..{self.eos_id})")
            out.append(self.symbols[i - 1])
        return out
