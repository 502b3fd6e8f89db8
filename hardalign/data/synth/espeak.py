"""A ctypes binding of libespeak-ng: audio plus one PHONEME event per phone.

``espeakng-loader`` ships libespeak-ng and its data; through ``ctypes`` we initialise it with
phoneme events, register a synth callback and call ``espeak_Synth``, receiving 22.05 kHz int16
audio and one PHONEME event (sample position + mnemonic) per phone. The library keeps global
state, so there is one process-wide handle and calls are serialised.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

__all__ = ["ESPEAK_RATE", "EVENT_PHONEME", "espeak_synthesize"]

#: Sample rate of libespeak-ng's output (Hz).
ESPEAK_RATE = 22050
#: espeak_EVENT_TYPE values of the events kept: PHONEME and END (the list ends with 0).
EVENT_PHONEME, EVENT_END, _EVENT_LIST_TERMINATED = 7, 5, 0
_PITCH, _RATE = 3, 1  # espeak_PARAMETER values


class _EspeakEvent(ctypes.Structure):
    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent))


class _Espeak:
    """Process-wide libespeak-ng handle (the library keeps global state; calls are serialised)."""

    _instance = None
    _lock = threading.Lock()

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise RuntimeError("the offline corpus needs the espeakng-loader package (pip install espeakng-loader)") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        # AUDIO_OUTPUT_SYNCHRONOUS = 2; options: PHONEME_EVENTS (0x1) | DONT_EXIT (0x8000)
        rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0x8001)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"libespeak-ng initialisation failed or gave {rate} Hz (expected {ESPEAK_RATE})")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "_Espeak":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == EVENT_PHONEME:
                self._events.append((e.type, e.sample, e.text_position, e.id.string.decode("ascii", "replace")))
            elif e.type == EVENT_END:
                self._events.append((e.type, e.sample, e.text_position, ""))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, pitch: int, rate: int) -> tuple[np.ndarray, list[tuple[int, int, int, str]]]:
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            # a voice switch resets rate and pitch, so set them afterwards
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks, self._events = [], []
            data = text.encode("ascii")
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return audio, list(self._events)


def espeak_synthesize(text: str, voice: str = "en-us", *, pitch: int = 50, rate: int = 175):
    """Synthesise ``text`` with libespeak-ng.

    Returns:
        ``(audio [N] int16 at 22050 Hz, events)``; each event is ``(type, sample, text_position, mnemonic)``
        for PHONEME (type 7) and END (type 5) events, sample positions in the 22.05 kHz audio.
    """
    return _Espeak.get().synthesize(text, voice, pitch, rate)
