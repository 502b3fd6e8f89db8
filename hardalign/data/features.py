"""Acoustic features: Kaldi-compatible log-mel filterbanks, deltas, frame stacking, CMVN.

The default front end is ``torchaudio.compliance.kaldi.fbank`` (40 mel bins + log energy,
25 ms windows every 10 ms, ``snip_edges`` so an N-sample signal gives ``1 + (N - 400) // 160``
frames at 16 kHz, dither 0) followed by deltas and delta-deltas
(``torchaudio.functional.compute_deltas``, Kaldi's 5-frame window): 41 x 3 = 123 dims.
``FeatureConfig(frontend="librosa")`` computes the same layout with librosa's mel filterbank
(HTK-style log power, same frame count) for comparison. ``FeatureConfig(compression="pcen")``
replaces the log by per-channel energy normalisation (:func:`pcen`), a per-band gain control.

Mean/variance normalisation (:class:`CMVN`) uses statistics gathered on the training split
(``global``) or on each speaker's own utterances (``speaker``); they are saved beside the
manifests (``cmvn-<key>.pt``) by :func:`load_cmvn`. ``utterance`` normalises each utterance by
its own mean and deviation (:class:`UtteranceCMVN`; no stored statistics; it follows the level
and colour of added noise, but needs the whole utterance). ``online`` is its causal form for
streaming (:class:`OnlineCMVN`, Kaldi's online CMVN): frame t is normalised by the statistics of
frames ``<= t``, with the global statistics as a prior worth a few hundred frames, so it also
follows added noise. After normalisation, :func:`stack_frames`
concatenates 3 consecutive frames into one 369-dim step (30 ms).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

__all__ = ["CMVN", "OnlineCMVN", "UtteranceCMVN", "FeatureConfig", "compute_cmvn", "extract_features", "load_cmvn", "num_frames", "pcen", "stack_frames"]

_FRONTENDS = ("kaldi", "librosa")
COMPRESSIONS = ("log", "pcen")
CMVN_MODES = ("global", "speaker", "utterance", "online", "none")


@dataclass(frozen=True)
class FeatureConfig:
    """Options of the acoustic front end (all of them enter the cache key).

    Attributes:
        frontend: ``"kaldi"`` (torchaudio's Kaldi fbank) or ``"librosa"``.
        num_mel_bins: mel filters (40).
        use_energy: append log frame energy as an extra coefficient (first column).
        delta_order: 0, 1 or 2 (deltas and delta-deltas).
        frame_length_ms / frame_shift_ms: window and hop (25 / 10).
        dither: Kaldi dither amount (0 keeps features deterministic).
        sample_rate: rate the audio is resampled to before feature extraction.
        dynamic_range_db: 0 (off) or a per-band floor, in dB: each static coefficient (log-mel
            bands and log energy) is raised to at least its utterance's 95th percentile minus this
            many dB, before deltas. Low-level detail (silence, weak high bands) is what added noise
            covers first, so a floor of about 20 dB makes clean and noisy versions of an
            utterance look more alike (docs/speech-data.md section 3).
        compression: ``"log"`` (log power, the default) or ``"pcen"``: per-channel energy
            normalisation (Wang et al. 2017; :func:`pcen`: ``librosa.pcen``, smoother time
            constant 0.4 s started at each band's first frame, gain 0.98, bias 2, power 0.5) of
            the mel (and frame) energies in place of the log, before deltas. Each band is divided by its own recent average, an
            automatic gain control that flattens stationary noise (white, pink) toward a constant.
        stack: consecutive frames concatenated per model step (3).
        cmvn: ``"global"`` (training-set statistics), ``"speaker"`` (per speaker), ``"utterance"``
            (each utterance by its own statistics), ``"online"`` (causal running statistics with
            the global ones as a prior) or ``"none"``.
    """

    frontend: str = "kaldi"
    num_mel_bins: int = 40
    use_energy: bool = True
    delta_order: int = 2
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    sample_rate: int = 16000
    dynamic_range_db: float = 0.0
    compression: str = "log"
    stack: int = 3
    cmvn: str = "global"

    def __post_init__(self):
        if self.frontend not in _FRONTENDS:
            raise ValueError(f"frontend must be one of {_FRONTENDS}, got {self.frontend!r}")
        if self.cmvn not in CMVN_MODES:
            raise ValueError(f"cmvn must be one of {CMVN_MODES}, got {self.cmvn!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.compression == "pcen" and self.dynamic_range_db:
            raise ValueError("dynamic_range_db floors log-power features; it cannot be combined with compression='pcen'")
        if self.delta_order not in (0, 1, 2):
            raise ValueError(f"delta_order must be 0, 1 or 2, got {self.delta_order!r}")
        if self.stack < 1:
            raise ValueError(f"stack must be >= 1, got {self.stack!r}")
        if self.dynamic_range_db < 0:
            raise ValueError(f"dynamic_range_db must be >= 0 (0: off), got {self.dynamic_range_db!r}")
        if self.num_mel_bins < 1:
            raise ValueError(f"num_mel_bins must be >= 1, got {self.num_mel_bins!r}")

    @property
    def base_dim(self) -> int:
        """Dims per frame before stacking (123 by default)."""
        return (self.num_mel_bins + int(self.use_energy)) * (1 + self.delta_order)

    @property
    def dim(self) -> int:
        """Dims per model step after stacking (369 by default)."""
        return self.base_dim * self.stack

    def extraction_key(self) -> str:
        """A short hash of the options that change the unnormalised, unstacked features."""
        opts = {k: v for k, v in asdict(self).items() if k not in ("stack", "cmvn")}
        if not opts["dynamic_range_db"]:
            del opts["dynamic_range_db"]  # off: the key (and the cache) of the features before the option
        if opts["compression"] == "log":
            del opts["compression"]  # likewise
        return hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def shift_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)


def num_frames(num_samples: int, config: FeatureConfig = FeatureConfig(), *, stacked: bool = True) -> int:
    """Frames for ``num_samples`` samples at ``config.sample_rate``: ``1 + (N - 400) // 160`` by default,
    then ``ceil(T / stack)`` after stacking.

    Example:
        >>> num_frames(16000, stacked=False), num_frames(16000)
        (98, 33)
    """
    if num_samples < config.window_samples:
        frames = 0
    else:
        frames = 1 + (num_samples - config.window_samples) // config.shift_samples
    return -(-frames // config.stack) if stacked else frames


def _deltas(feats: torch.Tensor, order: int) -> torch.Tensor:
    # compute_deltas works on [..., freq, time]; Kaldi's default window is 2 frames each side (5)
    out = [feats]
    cur = feats.transpose(0, 1)
    for _ in range(order):
        cur = AF.compute_deltas(cur, win_length=5)
        out.append(cur.transpose(0, 1))
    return torch.cat(out, dim=1)


def _librosa_fbank(waveform: np.ndarray, config: FeatureConfig) -> np.ndarray:
    import librosa

    win, hop = config.window_samples, config.shift_samples
    n_fft = 1 << (win - 1).bit_length()
    # pad so that librosa's centred n_fft frame holds the same `win` samples as Kaldi's frame i
    left = (n_fft - win) // 2
    y = np.pad(waveform.astype(np.float32), (left, n_fft - win - left))
    frames = librosa.util.frame(y, frame_length=n_fft, hop_length=hop) if len(y) >= n_fft else np.zeros((n_fft, 0), np.float32)
    window = np.zeros(n_fft, np.float32)
    window[left:left + win] = librosa.filters.get_window("hann", win, fftbins=True)
    spec = np.abs(np.fft.rfft(frames * window[:, None], axis=0)) ** 2
    mel = librosa.filters.mel(sr=config.sample_rate, n_fft=n_fft, n_mels=config.num_mel_bins, fmin=20.0, htk=True)
    logmel = np.log(np.maximum(mel @ spec, 1e-10)).T
    if config.use_energy:
        energy = np.log(np.maximum((frames[left:left + win] ** 2).sum(axis=0), 1e-10))
        logmel = np.concatenate([energy[:, None], logmel], axis=1)
    return logmel.astype(np.float32)


def extract_features(waveform: torch.Tensor | np.ndarray, config: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """Filterbank + delta features of one utterance (not normalised, not stacked).

    Args:
        waveform: ``[N]`` float samples in [-1, 1] at ``config.sample_rate``.
        config: front-end options.

    Returns:
        ``[T, config.base_dim]`` float32, ``T = 1 + (N - window) // shift`` (0 rows if N < window).

    Example:
        >>> extract_features(torch.zeros(16000) + 0.01 * torch.randn(16000)).shape
        torch.Size([98, 123])
    """
    wav = torch.as_tensor(waveform, dtype=torch.float32)
    if wav.ndim != 1:
        raise ValueError(f"waveform must be 1-D [N], got shape {tuple(wav.shape)}")
    if len(wav) < config.window_samples:
        return torch.zeros(0, config.base_dim)
    if config.frontend == "kaldi":
        feats = kaldi.fbank(
            wav[None] * 32768.0,  # Kaldi reads int16-scale samples; keeps log energies comparable to Kaldi's
            num_mel_bins=config.num_mel_bins,
            use_energy=config.use_energy,
            frame_length=config.frame_length_ms,
            frame_shift=config.frame_shift_ms,
            dither=config.dither,
            energy_floor=0.0,
            sample_frequency=float(config.sample_rate),
        )
    else:
        feats = torch.from_numpy(_librosa_fbank(wav.numpy() * 32768.0, config))
    if config.dynamic_range_db and feats.shape[0]:
        feats = floor_dynamic_range(feats, config.dynamic_range_db)
    if config.compression == "pcen" and feats.shape[0]:
        feats = pcen(feats, config)
    return _deltas(feats, config.delta_order) if config.delta_order else feats


def floor_dynamic_range(log_features: torch.Tensor, range_db: float, reference_quantile: float = 0.95) -> torch.Tensor:
    """Raise each column of natural-log power features ``[T, D]`` to at least its
    ``reference_quantile`` over the utterance minus ``range_db`` dB.

    Example:
        >>> x = torch.tensor([[0.0], [10.0], [10.0], [10.0]])  # ln power
        >>> [round(v, 3) for v in floor_dynamic_range(x, 20.0).flatten().tolist()]  # 20 dB: 4.6 in ln power
        [5.395, 10.0, 10.0, 10.0]
    """
    reference = torch.quantile(log_features, reference_quantile, dim=0)
    return torch.maximum(log_features, reference - range_db * math.log(10.0) / 10.0)


def pcen(log_features: torch.Tensor, config: FeatureConfig = FeatureConfig(), time_constant: float = 0.4) -> torch.Tensor:
    """Per-channel energy normalisation of natural-log power features ``[T, D]`` (``librosa.pcen``).

    The energies are ``exp(log_features)`` at Kaldi's int16 scale; each column is smoothed along
    time by librosa's first-order IIR filter (``time_constant`` seconds at
    ``config.frame_shift_ms``, started at the band's first frame) and PCEN's default gain, bias
    and power are applied. A stationary band of energy ``E`` maps to ``sqrt(E^0.02 + 2) -
    sqrt(2)``, 0.32-0.45 for ``ln E`` from 0 to 20 (a level change of 87 dB), so added white or
    pink noise moves the features far less than it moves log power.

    Example:
        >>> [round(float(pcen(torch.full((200, 1), level))[-1, 0]), 2) for level in (0.0, 20.0)]
        [0.32, 0.45]
    """
    import librosa
    import scipy.signal

    energies = np.exp(log_features.double().numpy().T)  # [D, T]
    frames = time_constant * config.sample_rate / config.shift_samples
    b = (math.sqrt(1 + 4 * frames**2) - 1) / (2 * frames**2)  # librosa's own default for this time constant
    # the smoother starts at each band's first frame (librosa's default starts it at 1, a level that
    # depends on the arbitrary scale of the energies, and gives every utterance a 0.4 s transient)
    zi = scipy.signal.lfilter_zi([b], [1, b - 1])[None, :] * energies[:, :1]
    out = librosa.pcen(energies, sr=config.sample_rate, hop_length=config.shift_samples,
                       time_constant=time_constant, b=b, zi=zi, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out.T)).to(log_features.dtype)


def stack_frames(features: torch.Tensor, stack: int) -> torch.Tensor:
    """Concatenate ``stack`` consecutive frames into one step, repeating the last frame to fill the end.

    Args:
        features: ``[T, D]``.
        stack: frames per step.

    Returns:
        ``[ceil(T / stack), stack * D]``; step t holds frames ``stack*t .. stack*t + stack - 1``.

    Example:
        >>> stack_frames(torch.arange(5.).unsqueeze(1), 3)
        tensor([[0., 1., 2.],
                [3., 4., 4.]])
    """
    if stack == 1 or features.shape[0] == 0:
        return features.reshape(-(-features.shape[0] // stack), stack * features.shape[1])
    t, d = features.shape
    steps = -(-t // stack)
    pad = steps * stack - t
    if pad:
        features = torch.cat([features, features[-1:].expand(pad, d)], dim=0)
    return features.reshape(steps, stack * d)  # [T', stack * D], frames of a step side by side


class CMVN:
    """Mean/variance normalisation with global and optional per-speaker statistics.

    Args:
        mean, std: ``[D]`` global statistics.
        speakers: speaker -> ``(mean [D], std [D])``; used for those speakers when given.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, speakers: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.mean, self.std = mean.float(), std.float()
        self.speakers = {k: (m.float(), s.float()) for k, (m, s) in (speakers or {}).items()}

    def __call__(self, features: torch.Tensor, speaker: str | None = None) -> torch.Tensor:
        """Normalise ``[T, D]`` features (per-speaker statistics when known for ``speaker``)."""
        mean, std = self.speakers.get(speaker, (self.mean, self.std)) if speaker is not None else (self.mean, self.std)
        return (features - mean.to(features)) / std.to(features)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "speakers": self.speakers}


class UtteranceCMVN:
    """Mean/variance normalisation of each utterance by its own statistics (``cmvn="utterance"``).

    Example:
        >>> UtteranceCMVN()(torch.tensor([[1.], [3.]])).flatten().tolist()
        [-1.0, 1.0]
    """

    def __call__(self, features: torch.Tensor, speaker: str | None = None) -> torch.Tensor:
        """Normalise ``[T, D]`` features by their own mean and deviation (floored at 1e-3)."""
        if features.shape[0] == 0:
            return features
        mean = features.mean(0)
        std = features.var(0, unbiased=False).clamp_min(1e-6).sqrt()
        return (features - mean) / std


class OnlineCMVN:
    """Causal mean/variance normalisation (``cmvn="online"``): Kaldi's online CMVN, vectorised.

    Frame t is normalised by the statistics of the last ``window`` frames up to and including t,
    pooled with the global statistics counted as ``prior_frames`` frames: the first frames of an
    utterance are normalised almost as by ``global``, later ones follow the utterance's own level
    and colour (as ``utterance`` does) without reading ahead, so a streaming recogniser can use it.

    Args:
        mean, std: ``[D]`` global statistics (the prior).
        prior_frames: weight of the prior, in frames (Kaldi's ``global_frames``: 200).
        window: frames of the running statistics (Kaldi's ``cmn_window``: 600).

    Example:
        >>> cmvn = OnlineCMVN(torch.zeros(1), torch.ones(1), prior_frames=1)
        >>> [round(v, 3) for v in cmvn(torch.tensor([[2.], [2.]])).flatten().tolist()]
        [0.816, 0.603]
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, *, prior_frames: float = 200.0, window: int = 600):
        if prior_frames <= 0 or window < 1:
            raise ValueError(f"OnlineCMVN: prior_frames must be > 0 and window >= 1, got {prior_frames!r}, {window!r}")
        self.mean, self.std = mean.double(), std.double()
        self.prior_frames, self.window = float(prior_frames), int(window)
        # the prior's sums, as if prior_frames frames with these statistics had been seen
        self._prior_sum = self.prior_frames * self.mean
        self._prior_square_sum = self.prior_frames * (self.std ** 2 + self.mean ** 2)

    def __call__(self, features: torch.Tensor, speaker: str | None = None) -> torch.Tensor:
        """Normalise ``[T, D]`` features causally (``speaker`` is ignored)."""
        if features.shape[0] == 0:
            return features
        x = features.double()
        T = x.shape[0]
        sums = torch.cat([x.new_zeros(1, x.shape[1]), x.cumsum(0)])  # [T + 1, D]
        squares = torch.cat([x.new_zeros(1, x.shape[1]), (x * x).cumsum(0)])
        end = torch.arange(1, T + 1)
        start = (end - self.window).clamp_min(0)
        count = (end - start).to(x.dtype).unsqueeze(1) + self.prior_frames
        mean = (sums[end] - sums[start] + self._prior_sum) / count
        second = (squares[end] - squares[start] + self._prior_square_sum) / count
        std = (second - mean ** 2).clamp_min(1e-6).sqrt()
        return ((x - mean) / std).to(features.dtype)


def _finalise(count: float, total: torch.Tensor, sq: torch.Tensor, floor: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    mean = total / count
    var = (sq / count - mean ** 2).clamp_min(floor ** 2)
    return mean, var.sqrt()


def compute_cmvn(items: Iterable[tuple[str, torch.Tensor]], *, per_speaker: bool = False) -> CMVN:
    """Accumulate statistics (in float64) over ``(speaker, features [T, D])`` pairs.

    Example:
        >>> c = compute_cmvn([("a", torch.tensor([[1.], [3.]])), ("b", torch.tensor([[5.], [7.]]))], per_speaker=True)
        >>> c.mean.item(), c.speakers["b"][0].item(), c(torch.tensor([[4.]])).item()
        (4.0, 6.0, 0.0)
    """
    total = sq = None
    count = 0
    spk: dict[str, list] = {}
    for speaker, feats in items:
        f = feats.double()
        s, q = f.sum(0), (f * f).sum(0)
        if total is None:
            total, sq = torch.zeros_like(s), torch.zeros_like(q)
        total += s
        sq += q
        count += f.shape[0]
        if per_speaker:
            acc = spk.setdefault(speaker, [0, torch.zeros_like(s), torch.zeros_like(q)])
            acc[0] += f.shape[0]
            acc[1] += s
            acc[2] += q
    if not count:
        raise ValueError("no feature frames to compute CMVN statistics from")
    mean, std = _finalise(count, total, sq)
    speakers = {k: _finalise(c, t, q) for k, (c, t, q) in spk.items() if c > 0}
    return CMVN(mean, std, speakers)


def _atomic_torch_save(obj, path: Path) -> None:
    from hardalign._io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_cmvn(manifest_dir: str | os.PathLike, config: FeatureConfig, split: str,
              features_of: Callable[[dict], torch.Tensor], records_of: Callable[[str], list[dict]]) -> CMVN | UtteranceCMVN | None:
    """Load (or compute once and save beside the manifests) the statistics ``config.cmvn`` asks for.

    Global statistics always come from the clean ``train`` split: ``cmvn-<key>-global.pt``. With
    ``cmvn="speaker"`` each speaker of ``split`` also gets statistics from its own clean
    utterances: ``cmvn-<key>-speaker-<split>.pt`` (the usual per-speaker practice: test speakers are
    normalised with their own statistics, no transcripts involved).

    Args:
        manifest_dir: the prepared directory.
        config: feature options (``config.cmvn`` picks the statistics, the extraction key names the files).
        split: split whose speakers need per-speaker statistics.
        features_of: record -> clean ``[T, base_dim]`` features (cached by the caller).
        records_of: split name -> its records.

    Returns:
        a :class:`CMVN`, an :class:`UtteranceCMVN` for ``config.cmvn == "utterance"``, an
        :class:`OnlineCMVN` (the global statistics as its prior) for ``"online"``, or None when
        ``config.cmvn == "none"``.
    """
    if config.cmvn == "none":
        return None
    if config.cmvn == "utterance":
        return UtteranceCMVN()
    manifest_dir = Path(manifest_dir)
    key = config.extraction_key()
    path = manifest_dir / f"cmvn-{key}-global.pt"
    if path.is_file():
        state = torch.load(path, weights_only=True)
    else:
        stats = compute_cmvn((r["speaker"], features_of(r)) for r in records_of("train"))
        state = {"mean": stats.mean, "std": stats.std, "config": json.dumps(asdict(config))}
        _atomic_torch_save(state, path)
    speakers = None
    if config.cmvn == "speaker":
        spath = manifest_dir / f"cmvn-{key}-speaker-{split}.pt"
        if spath.is_file():
            speakers = torch.load(spath, weights_only=True)["speakers"]
        else:
            speakers = compute_cmvn(((r["speaker"], features_of(r)) for r in records_of(split)), per_speaker=True).speakers
            _atomic_torch_save({"speakers": speakers}, spath)
    if config.cmvn == "online":
        return OnlineCMVN(state["mean"], state["std"])
    return CMVN(state["mean"], state["std"], speakers)
