"""The ``timit`` training task: TIMIT (or the offline synthetic corpus) phoneme recognition.

Plugs the hard-alignment recogniser (:mod:`hardalign.speech.model`) and the CTC baseline
(:mod:`hardalign.speech.ctc`) into the one training loop (:mod:`hardalign.train`) through the task
contract of :mod:`hardalign.train.tasks`. Data come from a directory of manifests written by
``hardalign prepare timit`` or ``hardalign prepare synth`` (:mod:`hardalign.data`); evaluation
decodes online (greedy or beam search) and scores on the 39-phone set, clean and under each
requested noise condition (frozen per utterance, so numbers are reproducible).

Example config (flat YAML; the trainer's keys and these share one namespace)::

    task: timit
    data_dir: exp/timit/data
    estimator: vimco-seq
    num_samples: 4
    proposal: posterior
    eval_noise: "white:10,white:0"
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator

import torch

from hardalign.data.noise import check_noise_options
from hardalign.speech.ctc import CTCRecognizer
from hardalign.speech.decode import Hypothesis, beam_search, greedy_decode
from hardalign.speech.model import HardAlignmentConfig, HardAlignmentRecognizer

__all__ = ["SpeechTask", "SpeechTaskConfig", "decode_batch", "parse_noise_conditions"]

_MODELS = ("hardalign", "ctc")
_DECODERS = ("greedy", "beam")


@dataclass
class SpeechTaskConfig(HardAlignmentConfig):
    """Options of the speech task (flat scalars; YAML keys and ``--kebab-case`` overrides).

    The hard-alignment model's own options are those of :class:`HardAlignmentConfig` (inherited:
    ``hidden_size``, ``encoder_layers``, ``decision_hidden``, ``label_embedding``,
    ``posterior_hidden``, ``baseline_hidden``, ``proposal``, ``emit_prior``, ``dropout``,
    ``dropout_ramp_steps``, the entropy schedule, ``posterior_coupling``, ``posterior_aligner``,
    ``aligner_weight``); ``hidden_size`` and ``dropout`` also size and regularise the CTC baseline.

    Attributes:
        data_dir: directory with ``train/dev/test.jsonl`` manifests.
        model: ``hardalign`` (online hard alignment) or ``ctc`` (unidirectional CTC baseline).
        phone_set: training phone set, 61 (60 after deleting ``q``), 48 or 39; scoring is on 39.
        cmvn: ``global`` or ``speaker`` mean/variance normalisation (or ``none``).
        frame_stack: frames stacked per model step (3: 30 ms steps).
        ctc_layers: LSTM layers of the CTC baseline (0: ``encoder_layers``, the same encoder as p).
        decoder: ``greedy`` or ``beam``; beam_size: its width.
        train_noise: noise added on the fly to training audio, ``TYPE:LOW:HIGH`` dB (e.g.
            ``pink:0:15``) or empty for clean training.
        eval_noise: comma-separated test conditions ``TYPE:SNR`` (``white:10,white:0``) scored
            besides clean.
        mix_scale: two-speaker mixing (MultiTIMIT): scale of the opposite-gender partner
            utterance added to every utterance, training and test (0: off; 0.1 / 0.25 / 0.5).
        eval_limit: score only the first N utterances of a split (0: all; quick checks).
        eval_batch_size: utterances per decoding batch.
        preload: keep the training features in memory (clean training only).
        num_threads: ``torch.set_num_threads`` (0: leave torch's default).
    """

    data_dir: str = "exp/timit/data"
    model: str = "hardalign"
    phone_set: int = 61
    cmvn: str = "global"
    frame_stack: int = 3
    ctc_layers: int = 0
    decoder: str = "greedy"
    beam_size: int = 4
    train_noise: str = ""
    eval_noise: str = ""
    mix_scale: float = 0.0
    eval_limit: int = 0
    eval_batch_size: int = 64
    preload: bool = True
    num_threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in _MODELS:
            raise ValueError(f"model={self.model!r}: must be one of {_MODELS}")
        if self.decoder not in _DECODERS:
            raise ValueError(f"decoder={self.decoder!r}: must be one of {_DECODERS}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size}: must be >= 1")
        check_noise_options(train_noise=self.train_noise, eval_noise=self.eval_noise, mix_scale=self.mix_scale)


def parse_noise_conditions(text: str) -> list[tuple[str, float]]:
    """Parse ``"white:10,pink:0"`` into ``[("white", 10.0), ("pink", 0.0)]``.

    Example:
        >>> parse_noise_conditions("white:10, babble:0")
        [('white', 10.0), ('babble', 0.0)]
        >>> parse_noise_conditions("")
        []
    """
    conditions = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, snr = item.rpartition(":")
        try:
            value = float(snr)
        except ValueError:
            value = math.nan
        if not sep or not kind or math.isnan(value):
            raise ValueError(f"eval_noise: {item!r} is not TYPE:SNR (e.g. white:10)")
        conditions.append((kind, value))
    return conditions


def decode_batch(model: torch.nn.Module, batch: dict[str, Any], *, decoder: str = "greedy", beam_size: int = 4) -> list[Hypothesis]:
    """Decode one batch with either model family; returns one :class:`Hypothesis` per utterance."""
    features, lengths = batch["features"], batch["feature_lengths"]
    if isinstance(model, CTCRecognizer):
        return model.decode(features, lengths)
    if decoder == "beam":
        return beam_search(model, features, lengths, beam_size=beam_size)
    return greedy_decode(model, features, lengths)


class SpeechTask:
    """The ``timit`` task (see :mod:`hardalign.train.tasks` for the contract)."""

    Config = SpeechTaskConfig
    metrics_to_minimize = ("per",)
    #: keys added since the first checkpoints were written, with the value those runs used (a
    #: stored config without them rebuilds the model they trained; see hardalign.train.run.load_run)
    legacy_defaults = {"posterior_kind": "recurrent", "posterior_encoder": "own"}

    def __init__(self, config: SpeechTaskConfig, train_config: Any, *, device: torch.device, rank: int = 0, world_size: int = 1):
        from hardalign.data import FeatureConfig, Vocabulary

        self.config = config
        self.train_config = train_config
        self.device = device
        self.rank = rank
        self.world_size = world_size
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.features = FeatureConfig(stack=config.frame_stack, cmvn=config.cmvn)
        self.vocab = Vocabulary.phones(config.phone_set)
        self._train = None
        self._train_items: list[dict] | None = None
        self._eval_cache: dict[tuple, Any] = {}
        # wall-clock bookkeeping for "time to reach a target PER": seconds since the task was
        # built (the start of training) minus the seconds spent evaluating
        self._created = time.monotonic()
        self._eval_seconds = 0.0

    # ------------------------------------------------------------------ data
    def _noise_config(self, kind: str | None = None, snr: str | float | None = None):
        """A :class:`hardalign.data.noise.NoiseConfig` (``None`` when it adds nothing): noise ``kind``
        at ``snr`` dB (a number or ``"lo:hi"``), plus the two-speaker mix when ``mix_scale > 0``."""
        from hardalign.data.noise import NoiseConfig

        noise = NoiseConfig(noise=kind or "none", snr=snr if snr is not None else "10", mix_speaker=self.config.mix_scale)
        return noise if noise.active else None

    def _train_noise(self):
        spec = self.config.train_noise.strip()
        if not spec:
            return self._noise_config()
        parts = spec.rsplit(":", 2)
        try:
            if len(parts) == 3:
                lo, hi = float(parts[1]), float(parts[2])
                return self._noise_config(parts[0], f"{lo:g}:{hi:g}")
        except ValueError:
            pass
        kind, _, snr = spec.rpartition(":")
        try:
            return self._noise_config(kind, float(snr))
        except ValueError:
            raise ValueError(f"train_noise={spec!r}: expected TYPE:LOW:HIGH or TYPE:SNR in dB (e.g. pink:0:15)") from None

    def dataset(self, split: str, noise=None):
        """The :class:`hardalign.data.SpeechDataset` of ``split`` (with a noise config or None)."""
        from hardalign.data import load_speech_dataset

        return load_speech_dataset(self.config.data_dir, split, features=self.features, noise=noise, phone_set=self.config.phone_set)

    @property
    def train_set(self):
        if self._train is None:
            self._train = self.dataset("train", self._train_noise())
        return self._train

    # ------------------------------------------------------------------ contract
    def build_model(self) -> torch.nn.Module:
        c = self.config
        input_dim = self.features.dim
        num_phones = len(self.vocab.symbols)
        if c.model == "ctc":
            return CTCRecognizer(
                input_dim, num_phones, hidden_size=c.hidden_size, num_layers=c.ctc_layers or c.encoder_layers,
                dropout=c.dropout, dropout_ramp_steps=c.dropout_ramp_steps,
            )
        model_options = {f.name: getattr(c, f.name) for f in fields(HardAlignmentConfig)}
        return HardAlignmentRecognizer(input_dim, num_phones, HardAlignmentConfig(**model_options))

    def train_batches(self, epoch: int) -> Iterator[dict]:
        from hardalign.data import BucketBatchSampler, collate_speech

        ds = self.train_set
        ds.set_epoch(epoch)
        per_rank = self.train_config.batch_size // self.world_size
        if per_rank < 1:
            raise ValueError(f"batch_size={self.train_config.batch_size} is smaller than world_size={self.world_size}")
        sampler = BucketBatchSampler(
            ds.lengths, per_rank, shuffle=True, seed=self.train_config.seed, drop_last=True,
            num_replicas=self.world_size, rank=self.rank,
        )
        sampler.set_epoch(epoch)
        clean = ds.mixer is None
        if clean and self.config.preload and self._train_items is None:
            self._train_items = [ds[i] for i in range(len(ds))]
        for indices in sampler:
            items = [self._train_items[i] for i in indices] if (clean and self._train_items is not None) else [ds[i] for i in indices]
            yield collate_speech(items)

    def _eval_batches(self, split: str, noise) -> list[dict]:
        from hardalign.data import collate_speech

        key = (split, repr(noise))
        if key not in self._eval_cache:
            ds = self.dataset(split, noise)
            n = len(ds) if self.config.eval_limit <= 0 else min(len(ds), self.config.eval_limit)
            order = sorted(range(n), key=lambda i: ds.lengths[i])  # similar lengths: little padding
            size = self.config.eval_batch_size
            batches = [collate_speech([ds[i] for i in order[s : s + size]]) for s in range(0, n, size)]
            self._eval_cache = {k: v for k, v in self._eval_cache.items() if k[0] == split}  # bound memory
            self._eval_cache[key] = batches
        return self._eval_cache[key]

    def decode(self, model: torch.nn.Module, split: str, noise=None) -> tuple[list[str], list[Hypothesis], list[list[str]]]:
        """Decode a split: returns ``(ids, hypotheses, reference phone sequences)``."""
        ids, hyps, refs = [], [], []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in self._eval_batches(split, noise):
                moved = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                hyps.extend(decode_batch(model, moved, decoder=self.config.decoder, beam_size=self.config.beam_size))
                ids.extend(batch["ids"])
                for row, length in zip(batch["targets"], batch["target_lengths"]):
                    refs.append(self.vocab.decode(row[: int(length)].tolist()))
        model.train(was_training)
        return ids, hyps, refs

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        """PER (39 phones) and its substitution / deletion / insertion rates, clean and per noise condition.

        Also ``train_wall_s``: seconds since the task was built, less the time spent in evaluation
        (during training: the training wall-clock so far).
        """
        from hardalign.data import phone_error_rate

        started = time.monotonic()
        results: dict[str, float] = {"train_wall_s": started - self._created - self._eval_seconds}
        conditions: list[tuple[str, Any]] = [("", self._noise_config())]  # clean (or the speaker mix alone)
        for kind, snr in parse_noise_conditions(self.config.eval_noise):
            conditions.append((f"_{kind}{snr:g}db", self._noise_config(kind, snr=snr)))
        for suffix, noise in conditions:
            _, hyps, refs = self.decode(model, split, noise)
            counts = phone_error_rate([self.vocab.decode(h.labels) for h in hyps], refs)
            results[f"per{suffix}"] = counts.per
            if not suffix:
                tokens = max(1, counts.ref_tokens)
                results["sub"] = counts.substitutions / tokens
                results["del"] = counts.deletions / tokens
                results["ins"] = counts.insertions / tokens
                results["ref_tokens"] = float(counts.ref_tokens)
        self._eval_seconds += time.monotonic() - started
        return results
