"""Added noise at a target SNR and the two-speaker mix (docs/speech-data.md section 3).

Noise is scaled against the clean utterance over its whole length:
``a = (rms_s / rms_n) * 10^(-SNR / 20)``, ``x = s + a * n``, computed in float64 so the measured
SNR of the result equals the request to well within 0.05 dB. Sources (``NoiseConfig.noise``, one
or a comma-separated list for multi-condition training):

* ``white``, ``pink`` (1/f power), ``brown`` (1/f^2 power): generated per utterance;
* ``babble``: the sum of ``babble_talkers`` other utterances of the *same split*, each brought to
  the same level, cropped/looped from random offsets;
* ``dir:/path``: recordings (any format soundfile reads, any sample rate; resampled to 16 kHz),
  cropped/looped from a random offset. The files are split into disjoint train / dev / test sets:
  by top-level ``train``/``dev``/``test`` sub-directories when present, otherwise by a stable hash
  of each file's relative path (10% dev, 10% test, the rest train).

Every random choice (left clean with probability ``clean_fraction``, which of several noise types,
noise file, offset, SNR drawn from a range such as ``"0:15"``, generated samples, babble talkers)
comes from a generator seeded by ``(seed, split, epoch, utterance id)``: the same epoch and
utterance always give the same mixture (a resumed run replays it). Training draws afresh each epoch;
dev/test conditions do not depend on the epoch and are frozen into
``<manifest_dir>/conditions/<split>-<tag>.jsonl`` the first time they are used (utterance, noise,
file, offset, SNR, seed), then read back from that file.

The multi-speaker mix (``mix_speaker`` = 0.1 / 0.25 / 0.5) pairs each utterance with one fixed
utterance of an opposite-gender speaker of the same split, brings the partner to the same RMS
level, scales it by ``mix_speaker`` and adds it; the target stays the first speaker's transcript.
With both options the mix is applied first and the noise SNR is measured against the primary
speaker alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from hardalign._io import atomic_write_text

__all__ = [
    "NOISE_KINDS",
    "NOISE_TYPES",
    "NoiseConfig",
    "NoiseMixer",
    "add_at_snr",
    "colored_noise",
    "measure_snr",
    "noise_files",
    "parse_eval_noise",
    "parse_noise_list",
    "parse_noise_spec",
    "parse_snr",
    "check_noise",
    "check_noise_options",
    "utterance_rng",
]

#: Generated noise colours and their power-spectrum exponent (power ~ 1 / f^exponent).
NOISE_KINDS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
#: Every noise type a spec may name (besides ``dir:PATH``, a folder of recordings).
NOISE_TYPES = ("white", "pink", "brown", "babble")
_AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".sph", ".aiff", ".aif", ".au", ".mp3")
#: SNRs outside this range (dB) are taken for a typo (or YAML's base-60 reading of ``10:20``).
SNR_LIMITS = (-50.0, 100.0)


def _source_kind(source: str) -> str:
    return "dir" if source.startswith("dir:") else source


def parse_snr(snr, *, key: str = "snr") -> tuple[float, float]:
    """An SNR option in dB: a number (``10``) or a range ``"lo:hi"`` drawn uniformly per utterance.

    Example:
        >>> parse_snr("0:15"), parse_snr(10)
        ((0.0, 15.0), (10.0, 10.0))

    Raises:
        ValueError: not a number or range, low end above high end, or outside ``SNR_LIMITS`` (an
            unquoted ``10:20`` in YAML or on the command line is read as the base-60 number 620).
    """
    text = str(snr).strip()
    lo_text, sep, hi_text = text.partition(":")
    lo, hi = _number(lo_text), _number(hi_text if sep else lo_text)
    if lo is None or hi is None:
        raise ValueError(f"--{key} must be a number of dB or a range lo:hi (e.g. 10 or 0:15), got {snr!r}")
    if lo > hi:
        raise ValueError(f"--{key} range {snr!r} has its low end above its high end")
    if not (SNR_LIMITS[0] <= lo and hi <= SNR_LIMITS[1]):
        raise ValueError(f"--{key} {snr!r} is outside [{SNR_LIMITS[0]:g}, {SNR_LIMITS[1]:g}] dB; write a range as a quoted "
                         f"string (snr: \"10:20\"): YAML reads an unquoted 10:20 as the base-60 number 620")
    return lo, hi


@dataclass(frozen=True)
class NoiseConfig:
    """What to add to each utterance (the options ``--noise``, ``--snr``, ``--clean-fraction``, ``--mix-speaker``).

    Attributes:
        noise: ``"none"`` (or ``""``), a type ``"white"``, ``"pink"``, ``"brown"``, ``"babble"``, a
            folder of recordings ``"dir:/path/to/noises"``, or a comma-separated list of these
            (``"white,pink,babble"``: one drawn per utterance, uniformly, for multi-condition training).
        snr: target SNR in dB: a number (``10``) or a range ``"lo:hi"`` drawn uniformly per utterance.
        mix_speaker: scale of the opposite-gender partner utterance (0 = no mix; 0.1 / 0.25 / 0.5).
        seed: base seed of every draw.
        babble_talkers: utterances summed into babble.
        clean_fraction: probability that an utterance gets no noise (the mix, if any, still applies).
        copies: 0 (default): training draws are new every epoch. N > 0: epoch ``e`` repeats the
            draws of epoch ``e % N``, so each training utterance has N fixed noisy versions (Kaldi's
            augmented copies of a data directory) whose features are cached after their first use:
            the data path then costs what clean training does, at the price of less variety.

    Example:
        >>> NoiseConfig("pink", "0:15").snr_range
        (0.0, 15.0)
        >>> NoiseConfig("white,pink,babble", clean_fraction=0.2).sources
        ('white', 'pink', 'babble')
        >>> NoiseConfig().active, NoiseConfig(mix_speaker=0.25).active
        (False, True)
    """

    noise: str = "none"
    snr: str | float = "10"
    mix_speaker: float = 0.0
    seed: int = 0
    babble_talkers: int = 6
    clean_fraction: float = 0.0
    copies: int = 0

    def __post_init__(self):
        for source in self.sources:
            kind = _source_kind(source)
            if kind not in ("babble", "dir") and kind not in NOISE_KINDS:
                raise ValueError(f"--noise must be none, white, pink, brown, babble, dir:/path or a comma list of them, got {self.noise!r}")
            if kind == "dir":
                path = Path(source[4:])
                if not path.is_dir():
                    raise ValueError(f"--noise {self.noise!r}: noise folder {str(path)!r} does not exist or is not a folder")
        self.snr_range  # validates
        if not 0.0 <= float(self.clean_fraction) <= 1.0:
            raise ValueError(f"--clean-fraction must be in [0, 1] (e.g. 0.2), got {self.clean_fraction!r}")
        if not 0.0 <= float(self.mix_speaker) <= 1.0:
            raise ValueError(f"--mix-speaker must be in [0, 1] (e.g. 0.1, 0.25, 0.5), got {self.mix_speaker!r}")
        if self.babble_talkers < 1:
            raise ValueError(f"babble_talkers must be >= 1, got {self.babble_talkers!r}")
        check_noise_copies(self.copies, key="--noise-copies")

    @property
    def sources(self) -> tuple[str, ...]:
        """The noise sources drawn from (empty: no noise)."""
        items = [part.strip() for part in str(self.noise or "").split(",")]
        return tuple(item for item in items if item and item != "none")

    @property
    def kind(self) -> str:
        """``none``, the kind of the one source (a type or ``dir``), or ``multi`` for several."""
        sources = self.sources
        if not sources:
            return "none"
        return _source_kind(sources[0]) if len(sources) == 1 else "multi"

    @property
    def snr_range(self) -> tuple[float, float]:
        return parse_snr(self.snr)

    @property
    def active(self) -> bool:
        return bool(self.sources) or float(self.mix_speaker) > 0

    def tag(self) -> str:
        """A short name for this condition, used in file names (``pink-snr10``, ``mix0.25``)."""
        parts = []
        if self.sources:
            names = [_source_kind(s) if not s.startswith("dir:") else "dir" + hashlib.sha1(s.encode()).hexdigest()[:6] for s in self.sources]
            lo, hi = self.snr_range
            parts.append("+".join(names) + f"-snr{lo:g}" + (f"to{hi:g}" if hi != lo else ""))
            if float(self.clean_fraction) > 0:
                parts.append(f"clean{float(self.clean_fraction):g}")
        if float(self.mix_speaker) > 0:
            parts.append(f"mix{float(self.mix_speaker):g}")
        return "_".join(parts) + (f"_seed{self.seed}" if self.seed else "") or "clean"


def utterance_rng(*parts) -> np.random.Generator:
    """A generator seeded by a stable hash of ``parts`` (e.g. ``(seed, split, epoch, utterance_id)``).

    Example:
        >>> float(utterance_rng(0, "dev", 0, "a").random()) == float(utterance_rng(0, "dev", 0, "a").random())
        True
    """
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def colored_noise(kind: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """White / pink / brown noise of unit RMS, ``[num_samples]`` float64.

    Pink and brown noise shape a white spectrum by ``f^(-exponent / 2)`` in amplitude.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise colour must be one of {sorted(NOISE_KINDS)}, got {kind!r}")
    exponent = NOISE_KINDS[kind]
    if exponent:
        # shape a power-of-two block (fast FFT whatever num_samples is), then crop
        size = 1 << max(1, (num_samples - 1).bit_length())
        spec = np.fft.rfft(rng.standard_normal(size))
        freqs = np.arange(len(spec), dtype=np.float64)
        freqs[0] = 1.0  # keep DC finite; it is removed below
        spec /= freqs ** (exponent / 2)
        spec[0] = 0.0
        white = np.fft.irfft(spec, n=size)[:num_samples]
    else:
        white = rng.standard_normal(num_samples)
    white -= white.mean()
    rms = np.sqrt(np.mean(white ** 2))
    return white / rms if rms > 0 else white


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def add_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, *, reference: np.ndarray | None = None) -> np.ndarray:
    """``speech + a * noise`` with ``a = (rms_ref / rms_noise) * 10^(-snr_db / 20)``.

    Args:
        speech: ``[N]`` samples the noise is added to.
        noise: ``[N]`` noise samples.
        snr_db: target SNR in dB.
        reference: the signal whose power defines the SNR (default ``speech``).

    Returns:
        ``[N]`` float32 mixture.

    Raises:
        ValueError: lengths differ, or the noise or reference is silent.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> s, n = rng.standard_normal(16000), rng.standard_normal(16000)
        >>> round(measure_snr(s, add_at_snr(s, n, 5.0) - s), 3)
        5.0
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} must have the same shape")
    ref = speech if reference is None else reference
    rms_s, rms_n = _rms(ref), _rms(noise)
    if rms_n == 0:
        raise ValueError("the noise segment is silent (RMS 0); cannot reach a target SNR")
    if rms_s == 0:
        raise ValueError("the speech is silent (RMS 0); the SNR is undefined")
    scale = (rms_s / rms_n) * 10.0 ** (-snr_db / 20.0)
    return (speech.astype(np.float64) + scale * noise.astype(np.float64)).astype(np.float32)


def measure_snr(speech: np.ndarray, noise: np.ndarray) -> float:
    """``20 log10(rms(speech) / rms(noise))`` in dB."""
    return 20.0 * float(np.log10(_rms(speech) / _rms(noise)))


def _segment(signal: np.ndarray, offset: int, length: int) -> np.ndarray:
    """``length`` samples from ``offset``, looping the signal when it is shorter."""
    idx = (offset + np.arange(length)) % len(signal)
    return signal[idx]


def _audio_files(root: Path) -> list[str]:
    """The files under ``root`` that open as audio (checked by reading each header, not by extension).

    A file with an audio extension that does not open is an error (a damaged or mislabelled noise
    file would otherwise fail mid-training); other files that do not open (READMEs, lists) are
    skipped.
    """
    from hardalign.data.audio import AudioError, audio_info

    found = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        try:
            info = audio_info(p)
        except (AudioError, OSError) as error:
            if p.suffix.lower() in _AUDIO_EXTENSIONS:
                raise ValueError(f"noise file {str(p)!r} is not readable audio: {error}") from None
            continue
        if info.num_samples < 1:
            raise ValueError(f"noise file {str(p)!r} holds no samples")
        found.append(str(p))
    return found


def noise_files(directory: str | os.PathLike) -> dict[str, list[str]]:
    """Noise recordings under ``directory`` split into disjoint ``train`` / ``dev`` / ``test`` lists.

    Every file is opened (its header read): the folder is checked by content, not by extension.

    Raises:
        ValueError: the folder does not exist, a file with an audio extension is not readable
            audio, fewer than 3 recordings (each split needs one), or a split sub-folder holds none.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"noise folder {str(root)!r} does not exist or is not a folder")
    files = _audio_files(root)
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if {"train", "dev", "test"} <= set(subdirs):
        out = {s: sorted(f for f in files if Path(f).is_relative_to(subdirs[s])) for s in ("train", "dev", "test")}
        for s, fs in out.items():
            if not fs:
                raise ValueError(f"noise folder {str(subdirs[s])!r} holds no audio files")
        return out
    if len(files) < 3:
        raise ValueError(f"noise folder {str(root)!r} holds {len(files)} audio file(s); at least 3 are needed so that "
                         f"train, dev and test noise are disjoint")
    ranked = sorted(files, key=lambda f: hashlib.sha1(os.path.relpath(f, root).encode()).hexdigest())
    k = max(1, len(files) // 10)
    return {"dev": sorted(ranked[:k]), "test": sorted(ranked[k:2 * k]), "train": sorted(ranked[2 * k:])}


def check_noise(noise: str, *, key: str = "noise") -> str:
    """Check one noise source: a type of :data:`NOISE_TYPES`, ``none``, or ``dir:PATH`` (folder opened).

    Returns:
        the kind: ``none``, a type name, or ``dir``.

    Raises:
        ValueError: an unknown type (naming the nearest one), or a ``dir:`` folder that is missing,
            empty or holds files that are not audio (naming the path).
    """
    from hardalign._checks import did_you_mean

    noise = str(noise).strip()
    if noise.startswith("dir:"):
        if not noise[4:]:
            raise ValueError(f"{key}: 'dir:' needs a folder, e.g. dir:/data/noises")
        try:
            noise_files(noise[4:])
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from None
        return "dir"
    if noise == "none" or noise in NOISE_TYPES:
        return noise
    raise ValueError(f"{key}: unknown noise type {noise!r}{did_you_mean(noise, NOISE_TYPES)} "
                     f"(use {', '.join(NOISE_TYPES)} or dir:PATH)")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def parse_noise_spec(spec: str, *, key: str = "noise", allow_range: bool = True, check: bool = True) -> tuple[str, str]:
    """Split ``TYPE:SNR`` or ``TYPE:LOW:HIGH`` into the noise source and the SNR text; check both.

    ``TYPE`` is a type of :data:`NOISE_TYPES` or ``dir:PATH`` (a folder of recordings; the path may
    contain colons). SNRs are in dB.

    Args:
        spec: e.g. ``"pink:0:15"``, ``"white:10"``, ``"dir:/data/noises:0:15"``.
        key: the config key named in error messages.
        allow_range: accept ``TYPE:LOW:HIGH`` (training draws the SNR per utterance).
        check: check the type and open a ``dir:`` folder's files (:func:`check_noise`).

    Returns:
        ``(noise, snr)`` as :class:`NoiseConfig` takes them, e.g. ``("pink", "0:15")``.

    Raises:
        ValueError: one line naming ``key``, the spec and what is wrong.

    Example:
        >>> parse_noise_spec("pink:0:15"), parse_noise_spec("white:10")
        (('pink', '0:15'), ('white', '10'))
        >>> parse_noise_spec("dir:/n:5", check=False)
        ('dir:/n', '5')
    """
    spec = str(spec).strip()
    form = "TYPE:LOW:HIGH or TYPE:SNR" if allow_range else "TYPE:SNR"
    example = "pink:0:15" if allow_range else "white:10"
    noise = snr = None
    parts = spec.rsplit(":", 2)
    is_range = len(parts) == 3 and parts[0] not in ("", "dir") and _number(parts[1]) is not None and _number(parts[2]) is not None
    if is_range and not allow_range:
        raise ValueError(f"{key}={spec!r}: expected {form} in dB (e.g. {example}); an SNR range is for training (--snr 0:15)")
    if is_range:
        lo, hi = _number(parts[1]), _number(parts[2])
        if lo > hi:
            raise ValueError(f"{key}={spec!r}: the SNR range {lo:g}:{hi:g} has its low end above its high end")
        noise, snr = parts[0], f"{lo:g}:{hi:g}"
    else:
        head, sep, tail = spec.rpartition(":")
        if sep and head and head != "dir" and _number(tail) is not None:
            noise, snr = head, f"{_number(tail):g}"
    if noise is None:
        if spec.startswith("dir:") or spec in NOISE_TYPES:
            raise ValueError(f"{key}={spec!r}: no SNR; expected {form} in dB (e.g. {spec}:{example.split(':', 1)[1]})")
        raise ValueError(f"{key}={spec!r}: expected {form} in dB (e.g. {example}); "
                         f"TYPE is one of {', '.join(NOISE_TYPES)} or dir:PATH")
    if check:
        check_noise(noise, key=f"{key}={spec!r}")
    return noise, snr


def parse_noise_list(text: str, *, key: str = "noise", check: bool = True) -> tuple[str, ...]:
    """The training ``noise`` option: empty or ``none`` (clean), or comma-separated sources.

    A source is a type of :data:`NOISE_TYPES` or ``dir:PATH``; the SNR is a separate option
    (``snr``), so an old-style ``TYPE:LOW:HIGH`` spec is an error saying how to split it.

    Example:
        >>> parse_noise_list(""), parse_noise_list("white, pink,babble")
        ((), ('white', 'pink', 'babble'))

    Raises:
        ValueError: one line naming ``key``: an unknown type, a missing / empty ``dir:`` folder, or
            an SNR written into the noise (``white:0:15``: use ``--noise white --snr 0:15``).
    """
    sources = []
    for item in filter(None, (part.strip() for part in str(text or "").split(","))):
        if item == "none":
            continue
        if _source_kind(item) != "dir" or item.count(":") > 1:
            try:
                noise, snr = parse_noise_spec(item, key=key, check=False)
            except ValueError:
                pass
            else:
                if _source_kind(item) != "dir" or not Path(item[4:]).is_dir():
                    raise ValueError(f"{key}={text!r}: the SNR is its own option: --{key.replace('_', '-')} {noise} --snr {snr} "
                                     f"(YAML: {key}: {noise}, snr: \"{snr}\")")
        if check:
            check_noise(item, key=f"{key}={item!r}")
        sources.append(item)
    return tuple(sources)


def parse_eval_noise(text: str, *, check: bool = True) -> list[tuple[str, float]]:
    """The ``eval_noise`` option: comma-separated ``TYPE:SNR`` test conditions.

    Example:
        >>> parse_eval_noise("white:10, babble:0")
        [('white', 10.0), ('babble', 0.0)]
        >>> parse_eval_noise("")
        []
    """
    conditions = []
    for item in filter(None, (part.strip() for part in str(text or "").split(","))):
        noise, snr = parse_noise_spec(item, key="eval_noise", allow_range=False, check=check)
        conditions.append((noise, float(snr)))
    return conditions


def check_noise_copies(copies, *, key: str = "noise_copies") -> None:
    """A ValueError naming ``key`` unless ``copies`` is a whole number >= 0 (0: a fresh training draw every epoch)."""
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 0:
        raise ValueError(f"{key}={copies!r}: must be a whole number >= 0 (0: new noise every epoch; N: N fixed noisy "
                         "copies of each training utterance, cycled through, whose features are cached)")


def check_noise_options(*, noise: str = "", snr: str | float = "0:15", clean_fraction: float = 0.0, eval_noise: str = "",
                        mix_speaker: float = 0.0, noise_copies: int = 0) -> None:
    """Check every noise option of a run when its config is read, before any work starts.

    Parses ``noise`` (:func:`parse_noise_list`), ``snr`` (:func:`parse_snr`) and ``eval_noise``
    (:func:`parse_eval_noise`), checks each type, opens every file of each ``dir:`` folder and
    checks ``clean_fraction``, ``mix_speaker`` and ``noise_copies``; the first problem is raised as one line naming
    the key and the path.

    Raises:
        ValueError: as those parsers, or ``clean_fraction`` / ``mix_speaker`` outside [0, 1].
    """
    parse_noise_list(noise)
    parse_snr(snr)
    parse_eval_noise(eval_noise)
    if not 0.0 <= float(clean_fraction) <= 1.0:
        raise ValueError(f"clean_fraction={clean_fraction!r}: must be in [0, 1] (the fraction of training utterances left clean)")
    if not 0.0 <= float(mix_speaker) <= 1.0:
        raise ValueError(f"mix_speaker={mix_speaker!r}: must be in [0, 1] (e.g. 0.1, 0.25, 0.5; 0 = off)")
    check_noise_copies(noise_copies)


@lru_cache(maxsize=64)
def _load_noise(path: str, sample_rate: int) -> np.ndarray:
    import torch
    import torchaudio.functional as AF

    from hardalign.data.audio import read_audio

    samples, rate = read_audio(path)
    if rate != sample_rate:
        samples = AF.resample(torch.from_numpy(samples), rate, sample_rate).numpy()
    if len(samples) == 0 or _rms(samples) == 0:
        raise ValueError(f"noise file {path} is empty or silent")
    return samples


class NoiseMixer:
    """Draws and applies the noise / mix condition of each utterance of one split.

    Args:
        config: the :class:`NoiseConfig`.
        records: the split's manifest records (babble talkers and mix partners come from them).
        split: ``"train"``, ``"dev"`` or ``"test"``.
        manifest_dir: where dev/test conditions are frozen (``conditions/``); None = do not freeze.
        sample_rate: rate of the waveforms passed to :meth:`apply`.
    """

    def __init__(self, config: NoiseConfig, records: list[dict], *, split: str, manifest_dir=None,
                 sample_rate: int = 16000):
        self.config = config
        self.split = split
        self.sample_rate = sample_rate
        self.records = {r["id"]: r for r in records}
        self._ids = sorted(self.records)
        #: the split's recordings of each ``dir:`` source
        self.files = {s: noise_files(s[4:])[split] for s in config.sources if _source_kind(s) == "dir"}
        self.partners = self._pair_speakers() if float(config.mix_speaker) > 0 else {}
        #: training draws change every epoch (so their features are not worth caching), unless
        #: they repeat every ``config.copies`` epochs
        self.varies_per_epoch = split == "train" and bool(config.sources) and not config.copies
        self.frozen: dict[str, dict] | None = None
        if split != "train" and manifest_dir is not None:
            self.frozen = self._freeze(Path(manifest_dir) / "conditions" / f"{split}-{config.tag()}.jsonl")

    def _pair_speakers(self) -> dict[str, str]:
        by_gender: dict[str, list[str]] = {}
        for i in self._ids:
            by_gender.setdefault(self.records[i]["gender"], []).append(i)
        partners = {}
        for i in self._ids:
            g = self.records[i]["gender"]
            other = {"f": "m", "m": "f"}.get(g)
            pool = by_gender.get(other, [])
            if not pool:
                raise ValueError(f"the multi-speaker mix needs an opposite-gender utterance in {self.split} for {i} "
                                 f"(gender {g!r}); none found")
            rng = utterance_rng(self.config.seed, self.split, "mix-partner", i)
            partners[i] = pool[int(rng.integers(len(pool)))]
        return partners

    def _draw(self, record: dict, epoch: int) -> dict:
        cfg = self.config
        uid = record["id"]
        sources = cfg.sources
        # only training noise is redrawn per epoch (or cycles through `copies` draws); the mix
        # partner and dev/test conditions are fixed
        ep = (epoch % cfg.copies if cfg.copies else epoch) if self.split == "train" and sources else 0
        rng = utterance_rng(cfg.seed, self.split, ep, uid)
        cond: dict = {"id": uid, "seed": int(rng.integers(2 ** 31))}
        # the clean / source draws come only when asked for, so that a single source draws exactly
        # what it always did (the frozen conditions and caches of earlier runs stay valid)
        if sources and float(cfg.clean_fraction) > 0 and rng.random() < float(cfg.clean_fraction):
            sources = ()
        source = (sources[0] if len(sources) == 1 else sources[int(rng.integers(len(sources)))]) if sources else None
        if source is not None:
            kind = _source_kind(source)
            lo, hi = cfg.snr_range
            cond["noise"] = source
            cond["snr"] = float(lo if lo == hi else rng.uniform(lo, hi))
            if kind == "dir":
                files = self.files[source]
                cond["file"] = files[int(rng.integers(len(files)))]
                cond["offset"] = int(rng.integers(1 << 30))  # taken modulo the file length when applied
            elif kind == "babble":
                pool = [i for i in self._ids if self.records[i]["speaker"] != record["speaker"]] or \
                       [i for i in self._ids if i != uid]
                if not pool:
                    raise ValueError(f"babble needs other utterances in {self.split}; it has only {uid}")
                picks = rng.choice(len(pool), size=min(cfg.babble_talkers, len(pool)), replace=False)
                cond["babble"] = [[pool[int(k)], int(rng.integers(1 << 30))] for k in sorted(picks)]
        if float(cfg.mix_speaker) > 0:
            cond["mix_partner"] = self.partners[uid]
            cond["mix_scale"] = float(cfg.mix_speaker)
        return cond

    def _freeze(self, path: Path) -> dict[str, dict]:
        if path.is_file():
            frozen = {}
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        c = json.loads(line)
                        frozen[c["id"]] = c
            missing = [i for i in self._ids if i not in frozen]
            if not missing:
                return frozen
        conditions = [self._draw(self.records[i], 0) for i in self._ids]
        atomic_write_text(path, "".join(json.dumps(c) + "\n" for c in conditions))
        return {c["id"]: c for c in conditions}

    def condition(self, record: dict, epoch: int = 0) -> dict | None:
        """The JSON-able condition of ``record`` at ``epoch`` (frozen for dev/test).

        None when the draw leaves the utterance as it is (``clean_fraction`` without a mix): the
        dataset then reads its clean, cached features.
        """
        if self.frozen is not None and record["id"] in self.frozen:
            return self.frozen[record["id"]]
        cond = self._draw(record, epoch)
        return cond if ("noise" in cond or "mix_partner" in cond) else None

    def _utterance(self, uid: str) -> np.ndarray:
        from hardalign.data.audio import read_audio

        rec = self.records[uid]
        samples, rate = read_audio(rec["audio"])
        if rate != self.sample_rate:
            import torch
            import torchaudio.functional as AF

            samples = AF.resample(torch.from_numpy(samples), rate, self.sample_rate).numpy()
        return samples

    def apply(self, waveform: np.ndarray, record: dict, condition: dict) -> np.ndarray:
        """Mix the partner (if any) and add the noise of ``condition`` to ``waveform`` (``[N]`` float32)."""
        speech = np.asarray(waveform, dtype=np.float32)
        n = len(speech)
        out = speech
        if "mix_partner" in condition:
            partner = self._utterance(condition["mix_partner"])[:n]
            partner = np.pad(partner, (0, n - len(partner)))
            rms_p = _rms(partner)
            if rms_p > 0:
                out = (out.astype(np.float64) + condition["mix_scale"] * (_rms(speech) / rms_p) * partner).astype(np.float32)
        if "noise" in condition:
            kind = "dir" if condition["noise"].startswith("dir:") else condition["noise"]
            rng = np.random.default_rng(condition["seed"])
            if kind in NOISE_KINDS:
                noise = colored_noise(kind, n, rng)
            elif kind == "babble":
                noise = np.zeros(n)
                for uid, offset in condition["babble"]:
                    talker = self._utterance(uid)
                    seg = _segment(talker, offset % len(talker), n).astype(np.float64)
                    r = _rms(seg)
                    noise += seg / r if r > 0 else seg
            else:
                full = _load_noise(condition["file"], self.sample_rate)
                noise = _segment(full, condition["offset"] % len(full), n)
                if _rms(noise) == 0:  # a silent stretch of the recording: fall back to the file start
                    noise = _segment(full, 0, n)
            out = add_at_snr(out, noise, condition["snr"], reference=speech)
        return out
