"""espeak-ng phoneme events -> TIMIT phone segments and word spans.

Each PHONEME event's mnemonic (stress marks stripped) maps to TIMIT labels through
:data:`ESPEAK_TO_TIMIT` (en-us) and, for the other English accents, the overrides in
:data:`ACCENT_OVERRIDES` (:func:`timit_mapping`): one mnemonic names a different sound in each
accent's phoneme table (``e@`` is [ɛɹ] in en-us, [eə] in RP), so the label follows the sound the
accent realises (espeak-ng's own IPA for it). A two-label mnemonic becomes two TIMIT phones
splitting the span 60/40; stops carry no separate closure; pauses inside a sentence are ``pau``.
Words are placed on the phones from the events' text positions (:func:`word_spans`).
"""

from __future__ import annotations

import numpy as np

from hardalign.data.synth.espeak import EVENT_PHONEME

__all__ = ["ACCENTS", "ACCENT_OVERRIDES", "ESPEAK_TO_TIMIT", "timit_mapping", "timit_segments", "word_spans"]

#: espeak-ng (en-us) phoneme mnemonics, stress marks stripped, -> TIMIT labels (61-set).
#: An empty tuple merges the event's span into the previous phone (``;`` marks palatalisation).
ESPEAK_TO_TIMIT: dict[str, tuple[str, ...]] = {
    "0": ("aa",), "3": ("axr",), "3:": ("er",), ";": (), "?": ("q",), "@": ("ax",), "@2": ("ax",),
    "@5": ("ax",), "@L": ("el",), "A:": ("aa",), "A": ("aa",), "A@": ("aa", "r"), "D": ("dh",), "E": ("eh",),
    "e": ("eh",), "I": ("ih",), "I#": ("ix",), "I2": ("ix",), "N": ("ng",), "O2": ("ao",), "O:": ("ao",),
    "O@": ("ao", "r"), "o@": ("ao", "r"), "OI": ("oy",), "S": ("sh",), "T": ("th",), "U": ("uh",),
    "U@": ("uh", "r"), "V": ("ah",), "Z": ("zh",), "a": ("ae",), "a#": ("ax",), "aa": ("ae",), "aI": ("ay",),
    "aI@": ("ay", "ax"), "aI3": ("ay", "er"), "aU": ("aw",), "aU@": ("aw", "ax"), "b": ("b",), "d": ("d",),
    "d#": ("dx",), "dZ": ("jh",), "e@": ("eh", "r"), "eI": ("ey",), "f": ("f",), "g": ("g",), "h": ("hh",),
    "i": ("iy",), "i:": ("iy",), "i@": ("ih", "r"), "i@3": ("ih", "r"), "j": ("y",), "k": ("k",), "l": ("l",),
    "l-": ("el",), "m": ("m",), "m-": ("em",), "n": ("n",), "n-": ("en",), "oU": ("ow",), "p": ("p",),
    "r": ("r",), "r-": ("r",), "s": ("s",), "t": ("t",), "t#": ("dx",), "tS": ("ch",), "u:": ("uw",),
    "v": ("v",), "w": ("w",), "x": ("k",), "z": ("z",), "z#": ("z",),
}

#: The English accents (espeak-ng voice names; "en" is Great Britain) the corpus uses, one per
#: TIMIT dialect region (``DR1`` = en-us ... ``DR8``); each has its mapping in :func:`timit_mapping`.
ACCENTS = ("en-us", "en-us-nyc", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")

# Non-rhotic accents: r-coloured vowels lose their r (a linking r before a vowel is its own ``r-``
# event), centring diphthongs end in a schwa. IPA in the comments is espeak-ng's own (phoneme mode 2).
_NON_RHOTIC = {"3": ("ax",), "A@": ("aa",), "O@": ("ao",), "o@": ("ao",), "e@": ("eh", "ax"),  # ə ɑː ɔː ɔː eə
               "i@": ("ih", "ax"), "i@3": ("ih", "ax"), "U@": ("uh", "ax")}  # iə iə ʊə

#: Per-accent changes to :data:`ESPEAK_TO_TIMIT` (mnemonics whose sound differs from en-us, or
#: that only that accent's phoneme table has).
ACCENT_OVERRIDES: dict[str, dict[str, tuple[str, ...]]] = {
    "en-us": {},
    "en-us-nyc": {**_NON_RHOTIC, "aa": ("eh", "ax"), "3:": ("ax", "ih")},  # ɛə (bath), əɪ (nurse)
    "en": {**_NON_RHOTIC},  # Great Britain; a (trap, bath) stays ae, ɒ stays aa, əʊ stays ow
    "en-gb-x-rp": {**_NON_RHOTIC, "aa": ("aa",), "i": ("ih",), "U@": ("ao",)},  # ɑː, ɪ (happy), ɔː (tour)
    # rhotic: the r after A@, e@, O@, i@3 is its own event here
    "en-gb-scotland": {"3": ("ax",), "3:": ("eh",), "A@": ("aa",), "e@": ("ey",),  # ɜ e aː e
                       "O@": ("ao",), "o@": ("ow",), "i@3": ("ih",), "U@": ("ux", "r"),  # ɔ o ɪ ʉɹ
                       "U": ("ux",), "u:": ("ux",), "i": ("ey",), "IR": ("er",),  # ʉ ʉː e əɹ
                       "VR": ("ah", "r"), "aI2": ("ay",), "w#": ("w",)},  # ʌɹ aɪ ʍ
    "en-029": {**_NON_RHOTIC, "t[": ("t",)},  # dental t̪
    "en-gb-x-gbclan": {**_NON_RHOTIC, "V": ("uh",)},  # ʊ (strut)
    "en-gb-x-gbcwmd": {**_NON_RHOTIC, "V": ("uh",), "aI": ("oy",), "e@": ("er",), "i:": ("ey",),  # ʊ ɔɪ ɜː ei
                       "u:": ("ow",)},  # əu
}


def timit_mapping(accent: str = "en-us") -> dict[str, tuple[str, ...]]:
    """Mnemonic -> TIMIT labels for one accent: :data:`ESPEAK_TO_TIMIT` with the accent's overrides.

    Example:
        >>> timit_mapping("en-us")["e@"], timit_mapping("en-gb-x-rp")["e@"]
        (('eh', 'r'), ('eh', 'ax'))
    """
    if accent not in ACCENT_OVERRIDES:
        raise ValueError(f"no TIMIT mapping for the accent {accent!r}; known accents: {', '.join(ACCENTS)}")
    return {**ESPEAK_TO_TIMIT, **ACCENT_OVERRIDES[accent]}


def timit_segments(events, num_samples: int, text: str, lead: int, scale: float, *, accent: str = "en-us"):
    """Phoneme events -> (phones, starts, ends, word spans) in output samples.

    ``lead`` samples of silence are prepended (output rate); ``scale`` maps espeak samples to output
    samples; ``accent`` (the voice's language, e.g. ``"en-gb-x-rp"``) selects :func:`timit_mapping`.

    Raises:
        KeyError: a mnemonic without a TIMIT mapping for this accent (never dropped silently).
    """
    mapping = timit_mapping(accent)
    phon = [(s, pos, m) for t, s, pos, m in events if t == EVENT_PHONEME]
    if not phon:
        raise RuntimeError(f"espeak-ng produced no phoneme events for {text!r}")
    segments: list[list] = []  # [label, start, end, text_position]
    for k, (s, pos, m) in enumerate(phon):
        start = lead + int(round(s * scale))
        end = lead + int(round((phon[k + 1][0] if k + 1 < len(phon) else num_samples) * scale))
        mn = m.replace("'", "").replace(",", "")
        if mn.startswith("_"):
            segments.append(["pau", start, end, None])
            continue
        if mn not in mapping:
            raise KeyError(f"espeak-ng phoneme {m!r} ({accent}, in {text!r}) has no TIMIT mapping; "
                           f"add it to ESPEAK_TO_TIMIT or ACCENT_OVERRIDES[{accent!r}]")
        labels = mapping[mn]
        if not labels:
            if segments:
                segments[-1][2] = end
            continue
        if len(labels) == 1:
            segments.append([labels[0], start, end, pos])
        else:
            cut = start + int(round(0.6 * (end - start)))
            segments.append([labels[0], start, cut, pos])
            segments.append([labels[1], cut, end, pos])
    return segments


def word_spans(segments, text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` per word of ``text`` from the phones' text positions.

    espeak-ng sometimes voices two words as one unit (e.g. "do not"); then all their phones carry
    the first word's position and the unit's phones are shared out in proportion to letters.
    """
    words = text.split()
    starts, pos = [], 0
    for w in words:
        pos = text.index(w, pos)
        starts.append(pos + 1)  # espeak text positions are 1-based
        pos += len(w)
    per_word: list[list[tuple[int, int]]] = [[] for _ in words]
    for label, start, end, p in segments:
        if p is None:
            continue
        k = max(i for i, s in enumerate(starts) if s <= p) if p >= starts[0] else 0
        per_word[k].append((start, end))
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(words):
        j = i + 1
        while j < len(words) and not per_word[j]:
            j += 1
        phones = per_word[i]
        group = words[i:j]
        if len(phones) < len(group):
            raise RuntimeError(f"cannot place the words {group} of {text!r} on {len(phones)} phone(s)")
        letters = np.cumsum([len(w) for w in group]) / sum(len(w) for w in group)
        cuts = [0] + [min(len(phones) - (len(group) - 1 - g), max(g + 1, int(round(f * len(phones)))))
                      for g, f in enumerate(letters[:-1])] + [len(phones)]
        for g, w in enumerate(group):
            out.append((w, phones[cuts[g]][0], phones[cuts[g + 1] - 1][1]))
        i = j
    return out
