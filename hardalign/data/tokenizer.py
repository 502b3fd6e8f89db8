"""Word-level targets as characters or subword units, through sentencepiece (``--targets chars|bpe``).

The tokenizer is trained on the ``text`` field of the training manifest (lower-cased, punctuation
other than apostrophes removed) and saved beside the manifests as ``spm-<kind>-<size>.model``.
Its ids follow the :class:`~hardalign.data.phones.Vocabulary` convention of the whole package:
0 = padding / blank, pieces ``1..n`` (sentencepiece id + 1; the unknown piece is id 1), EOS ``n + 1``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from hardalign.data.phones import Vocabulary

__all__ = ["TextTokenizer", "load_or_train_tokenizer", "normalize_text"]

_KINDS = {"chars": "char", "bpe": "bpe"}


def normalize_text(text: str) -> str:
    """Lower case, letters / digits / apostrophes / single spaces only.

    Example:
        >>> normalize_text("She had your dark suit in greasy wash-water all year.")
        'she had your dark suit in greasy wash water all year'
    """
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


class TextTokenizer:
    """A trained sentencepiece model with the package's id convention.

    Args:
        model_file: a ``.model`` file written by :meth:`train`.

    Attributes:
        vocab: the :class:`Vocabulary` of pieces (``vocab.eos_id`` for end of sequence).
    """

    def __init__(self, model_file: str | os.PathLike):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise FileNotFoundError(f"sentencepiece model {model_file} does not exist")
        self.model_file = model_file
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.vocab = Vocabulary([self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())])

    @classmethod
    def train(cls, texts: Iterable[str], model_prefix: str | os.PathLike, *, kind: str = "bpe",
              vocab_size: int = 200) -> "TextTokenizer":
        """Train on ``texts`` (normalised first) and write ``<model_prefix>.model`` / ``.vocab``.

        Args:
            texts: training sentences.
            model_prefix: output path without extension.
            kind: ``"chars"`` or ``"bpe"``.
            vocab_size: upper bound on the number of pieces (smaller corpora get fewer).
        """
        if kind not in _KINDS:
            raise ValueError(f"tokenizer kind must be one of {sorted(_KINDS)}, got {kind!r}")
        lines = [normalize_text(t) for t in texts]
        lines = [line for line in lines if line]
        if not lines:
            raise ValueError("no text to train the tokenizer on")
        model_prefix = Path(model_prefix)
        model_prefix.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=model_prefix.parent) as tmp:
            corpus = Path(tmp) / "text.txt"
            corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(Path(tmp) / "m"), model_type=_KINDS[kind],
                vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
                unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=1, minloglevel=2,
            )
            # move into place only when complete (another process may be reading the old one)
            os.replace(Path(tmp) / "m.vocab", f"{model_prefix}.vocab")
            os.replace(Path(tmp) / "m.model", f"{model_prefix}.model")
        return cls(f"{model_prefix}.model")

    def encode(self, text: str) -> list[int]:
        """Normalised ``text`` -> ids in ``1..n`` (no EOS)."""
        return [i + 1 for i in self.sp.encode(normalize_text(text))]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; padding is skipped, decoding stops at EOS."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.vocab.eos_id:
                break
            if i != self.vocab.pad_id:
                out.append(i - 1)
        return self.sp.decode(out)


def load_or_train_tokenizer(manifest_dir: str | os.PathLike, kind: str, *, vocab_size: int = 200) -> TextTokenizer:
    """The tokenizer of a prepared directory, trained on ``train.jsonl`` text the first time.

    Args:
        manifest_dir: prepared directory.
        kind: ``"chars"`` or ``"bpe"``.
        vocab_size: for ``bpe`` (ignored for ``chars``).
    """
    from hardalign.data.timit import read_manifest

    manifest_dir = Path(manifest_dir)
    prefix = manifest_dir / (f"spm-{kind}-{vocab_size}" if kind == "bpe" else f"spm-{kind}")
    if Path(f"{prefix}.model").is_file():
        return TextTokenizer(f"{prefix}.model")
    texts = [r["text"] for r in read_manifest(manifest_dir / "train.jsonl")]
    return TextTokenizer.train(texts, prefix, kind=kind, vocab_size=vocab_size if kind == "bpe" else 100)
