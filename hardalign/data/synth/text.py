"""Sentences for the offline corpus: a small grammar over the word lists in ``resources/synth_lexicon.txt``.

Templates are filled with words drawn from a ``random.Random``; the same seed gives the same
sentences. :func:`sentence_sets` draws the training text and held-out dev / test sentences that
never occur in the training text.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources

__all__ = ["TEMPLATES", "lexicon", "make_sentence", "sentence_sets"]

#: Sentence templates; ``{category}`` slots are filled from the lexicon.
TEMPLATES = (
    "the {adj} {noun} {verb_past} the {noun}",
    "{name} {verb_past} a {adj} {noun} {prep} the {noun}",
    "the {noun} {prep} the {noun} was very {adj}",
    "{name} and {name} {verb_past} the {adj} {noun} {adverb}",
    "every {adj} {noun} {verb_pres} {prep} the {noun}",
    "do not {verb_base} the {noun} {prep} the {adj} {noun}",
    "{pron} {verb_past} {number} {noun_pl} {adverb}",
    "why did the {adj} {noun} {verb_base} {number} {noun_pl}",
    "{pron} will {verb_base} the {adj} {noun_pl} {prep} the {noun} {adverb}",
    "a {adj} {noun} {verb_past} {name} {prep} the {adj} {noun}",
)


@lru_cache(maxsize=None)
def lexicon() -> dict[str, tuple[str, ...]]:
    """Category -> words, read from the package's ``synth_lexicon.txt``."""
    text = resources.files("hardalign.data").joinpath("resources", "synth_lexicon.txt").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, words = line.split(":", 1)
            out[name.strip()] = tuple(words.split())
    return out


def make_sentence(rng: random.Random) -> str:
    """One sentence, lower case, no punctuation.

    Example:
        >>> make_sentence(random.Random(0)).split()[0] in {"the", "a", "do", "why", "every", "she", "he", "they",
        ...                                                "we", "you"} | set(lexicon()["name"])
        True
    """
    template = rng.choice(TEMPLATES)
    words = lexicon()
    out = []
    for token in template.split():
        if token.startswith("{"):
            out.append(rng.choice(words[token[1:-1]]))
        else:
            out.append(token)
    return " ".join(out)


def sentence_sets(num_train: int, num_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """``num_train`` training sentences and ``num_eval`` distinct held-out sentences not in the training text."""
    rng = random.Random(f"sentences-{seed}")
    train = [make_sentence(rng) for _ in range(num_train)]
    seen = set(train)
    held_out: list[str] = []
    tries = 0
    while len(held_out) < num_eval:
        s = make_sentence(rng)
        tries += 1
        if tries > 100 * (num_eval + 10):
            raise RuntimeError("could not draw enough held-out sentences; the grammar is too small for this size")
        if s not in seen:
            seen.add(s)
            held_out.append(s)
    return train, held_out
