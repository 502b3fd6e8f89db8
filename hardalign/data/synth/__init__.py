"""The offline corpus: TIMIT-layout speech synthesised with libespeak-ng (docs/speech-data.md, "The offline corpus").

One module per concept:

* :mod:`~hardalign.data.synth.espeak`: the ctypes binding of libespeak-ng
  (:func:`espeak_synthesize`: 22.05 kHz audio plus one PHONEME event per phone);
* :mod:`~hardalign.data.synth.segments`: phoneme events -> TIMIT phone segments and word spans
  (:data:`ESPEAK_TO_TIMIT`, per-accent :func:`timit_mapping`);
* :mod:`~hardalign.data.synth.speakers`: speaker design, accent x voice variant x pitch x rate
  (:func:`synth_speakers`; dev/test variants never occur in training; dev and test are twins;
  two variant pools, ``default`` and ``alternate``, :data:`VOICE_POOLS`);
* :mod:`~hardalign.data.synth.text`: the sentence grammar (held-out dev/test sentences);
* :mod:`~hardalign.data.synth.corpus`: the corpus writer (:func:`build_synth_corpus`: SPHERE
  ``.WAV``, ``.PHN``, ``.WRD``, ``.TXT`` in TIMIT's layout, then the manifests).

``hardalign prepare synth --out DIR`` wraps :func:`build_synth_corpus`.
"""

from hardalign.data.synth.corpus import SAMPLE_RATE, SynthResult, build_synth_corpus
from hardalign.data.synth.espeak import espeak_synthesize
from hardalign.data.synth.segments import ACCENT_OVERRIDES, ACCENTS, ESPEAK_TO_TIMIT, timit_mapping
from hardalign.data.synth.speakers import (
    ALTERNATE_VOICES,
    PITCHES,
    RATES,
    VOICE_POOLS,
    VOICES,
    SynthSpeaker,
    synth_speakers,
)

__all__ = [
    "ACCENTS",
    "ACCENT_OVERRIDES",
    "ALTERNATE_VOICES",
    "ESPEAK_TO_TIMIT",
    "PITCHES",
    "RATES",
    "SAMPLE_RATE",
    "VOICES",
    "VOICE_POOLS",
    "SynthResult",
    "SynthSpeaker",
    "build_synth_corpus",
    "espeak_synthesize",
    "synth_speakers",
    "timit_mapping",
]
