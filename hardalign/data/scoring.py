"""Phone error rate on the 39-phone TIMIT set (Kaldi scoring policy).

Hypotheses and references (61-, 48- or 39-set labels) are folded to 39 phones with ``q`` deleted
(:func:`hardalign.data.phones.fold_phones`); ``sil`` is scored and adjacent ``sil`` are not merged
unless ``merge_sil=True``. The total edit distance comes from
``torchaudio.functional.edit_distance``; a Levenshtein back-trace splits it into substitutions,
deletions and insertions (the split is one of the minimum-cost alignments, the total is exact).
Under this policy the reference token counts of real TIMIT are 15057 (dev) and 7215 (core test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torchaudio.functional as AF

from hardalign.data.phones import fold_phones

__all__ = ["ErrorCounts", "align_counts", "phone_error_rate", "reference_token_count"]


@dataclass(frozen=True)
class ErrorCounts:
    """Edit-distance tallies over a set of utterances.

    Attributes:
        substitutions, deletions, insertions: error counts.
        ref_tokens: number of reference tokens (after folding).
        utterances: number of utterance pairs scored.
    """

    substitutions: int
    deletions: int
    insertions: int
    ref_tokens: int
    utterances: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def per(self) -> float:
        """Errors / reference tokens (a fraction, 0.2 means 20%)."""
        return self.errors / max(1, self.ref_tokens)

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                           self.insertions + other.insertions, self.ref_tokens + other.ref_tokens,
                           self.utterances + other.utterances)

    def as_dict(self) -> dict[str, float]:
        return {"per": self.per, "substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions, "ref_tokens": self.ref_tokens, "utterances": self.utterances}


def align_counts(hyp: Sequence, ref: Sequence) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one minimum-cost alignment of ``hyp`` to ``ref``.

    Example:
        >>> align_counts(["a", "x", "c", "d"], ["a", "b", "c"])
        (1, 0, 1)
    """
    n, m = len(ref), len(hyp)
    # dp[i][j] = (cost, subs, dels, ins) aligning ref[:i] with hyp[:j]
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            c, s, d, ins = prev[j - 1]
            same = ref[i - 1] == hyp[j - 1]
            best = (c + (0 if same else 1), s + (0 if same else 1), d, ins)
            c, s, d, ins = prev[j]
            if c + 1 < best[0]:
                best = (c + 1, s, d + 1, ins)
            c, s, d, ins = cur[j - 1]
            if c + 1 < best[0]:
                best = (c + 1, s, d, ins + 1)
            cur.append(best)
        prev = cur
    return prev[m][1], prev[m][2], prev[m][3]


def phone_error_rate(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], *, merge_sil: bool = False,
                     fold: bool = True) -> ErrorCounts:
    """Score hypotheses against references on the 39-phone set.

    Args:
        hyps: one label sequence per utterance (61/48/39-set labels).
        refs: the reference label sequences, same order and length as ``hyps``.
        merge_sil: merge adjacent ``sil`` in both before scoring (Kaldi does not).
        fold: fold both to 39 phones first (set False for non-phone targets such as characters).

    Returns:
        :class:`ErrorCounts`; ``.per`` is the phone error rate as a fraction.

    Raises:
        ValueError: different numbers of hypotheses and references, or an unknown phone label.

    Example:
        >>> c = phone_error_rate([["h#", "ix", "z", "h#"]], [["h#", "ih", "s", "epi", "h#"]])
        >>> c.substitutions, c.deletions, c.insertions, c.ref_tokens, round(c.per, 2)
        (1, 1, 0, 5, 0.4)
    """
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references")
    subs = dels = ins = tokens = 0
    for hyp, ref in zip(hyps, refs):
        if fold:
            hyp, ref = fold_phones(hyp, 39, merge_sil=merge_sil), fold_phones(ref, 39, merge_sil=merge_sil)
        else:
            hyp, ref = list(hyp), list(ref)
        total = AF.edit_distance(ref, hyp)
        s, d, i = align_counts(hyp, ref)
        if s + d + i != total:  # the back-trace and torchaudio must agree on the minimum cost
            raise RuntimeError(f"edit distance mismatch: torchaudio {total}, back-trace {s + d + i}")
        subs, dels, ins, tokens = subs + s, dels + d, ins + i, tokens + len(ref)
    return ErrorCounts(subs, dels, ins, tokens, len(refs))


def reference_token_count(records: Sequence[dict], *, merge_sil: bool = False) -> int:
    """Number of 39-phone reference tokens in manifest records (``phones`` field).

    Real TIMIT under the Kaldi policy: 15057 for dev, 7215 for the core test.
    """
    return sum(len(fold_phones(r["phones"], 39, merge_sil=merge_sil)) for r in records)
