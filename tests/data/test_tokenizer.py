"""Sentencepiece targets (--targets chars|bpe)."""

from __future__ import annotations

import pytest

from hardalign.data import load_speech_dataset
from hardalign.data.tokenizer import TextTokenizer, load_or_train_tokenizer, normalize_text

TEXTS = ["She had your dark suit in greasy wash water all year.", "Don't ask me to carry an oily rag like that.",
         "The bird sings over the mountain.", "Our fathers worked hard all year."] * 5


@pytest.mark.parametrize("kind", ["chars", "bpe"])
def test_round_trip_and_id_convention(tmp_path, kind):
    tok = TextTokenizer.train(TEXTS, tmp_path / f"m-{kind}", kind=kind, vocab_size=60)
    ids = tok.encode(TEXTS[1])
    assert min(ids) >= 1 and max(ids) < tok.vocab.eos_id == len(tok.vocab.symbols) + 1
    assert tok.decode(ids + [tok.vocab.eos_id, 3]) == normalize_text(TEXTS[1])
    assert tok.decode([0] + ids) == normalize_text(TEXTS[1])
    if kind == "chars":
        # one piece per character, spaces (and the start) as the word-boundary piece
        assert len(ids) == len(normalize_text(TEXTS[1])) + 1
    again = TextTokenizer(tmp_path / f"m-{kind}.model")
    assert again.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_bpe_pieces_are_shorter_than_chars(tmp_path):
    chars = TextTokenizer.train(TEXTS, tmp_path / "c", kind="chars")
    bpe = TextTokenizer.train(TEXTS, tmp_path / "b", kind="bpe", vocab_size=80)
    assert len(bpe.encode(TEXTS[0])) < len(chars.encode(TEXTS[0]))


def test_dataset_text_targets(prepared):
    ds = load_speech_dataset(prepared, "train", targets="chars", cache_dir=None)
    assert (prepared / "spm-chars.model").is_file()
    tok = load_or_train_tokenizer(prepared, "chars")
    item = ds[0]
    assert tok.decode(item["targets"].tolist()) == "she had" and ds.vocab == tok.vocab


def test_bad_kind(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        TextTokenizer.train(TEXTS, tmp_path / "x", kind="words")
    with pytest.raises(ValueError, match="targets"):
        load_speech_dataset(tmp_path, "train", targets="words")
