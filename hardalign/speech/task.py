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
    noise: white,pink,babble    # multi-condition training (omit for clean training)
    snr: "0:15"
    clean_fraction: 0.2
    eval_noise: "white:10,white:0"
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F

from hardalign.data.noise import NoiseConfig, check_noise_options, parse_eval_noise, parse_noise_spec
from hardalign.speech.ctc import CTCRecognizer
from hardalign.speech.decode import Hypothesis, beam_search, greedy_decode
from hardalign.speech.model import HardAlignmentConfig, HardAlignmentRecognizer

__all__ = ["SpeechTask", "SpeechTaskConfig", "decode_batch", "parse_noise_conditions"]

_MODELS = ("hardalign", "ctc")
_DECODERS = ("greedy", "median", "beam")


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
        cmvn: ``global``, ``speaker``, ``utterance`` or ``online`` (causal) mean/variance
            normalisation, or ``none`` (:mod:`hardalign.data.features`).
        dynamic_range_db: 0 (off) or the per-band floor of the features in dB below each band's
            95th percentile in the utterance (``FeatureConfig.dynamic_range_db``).
        compression: ``log`` (log-mel power) or ``pcen`` (per-channel energy normalisation,
            ``FeatureConfig.compression``).
        frame_stack: frames stacked per model step (3: 30 ms steps).
        ctc_layers: LSTM layers of the CTC baseline (0: ``encoder_layers``, the same encoder as p).
        decoder: ``greedy`` (emit where p's emit probability passes 0.5), ``median`` (greedy, emitting
            where the next emission's probability since the last one reaches 0.5: for a p whose
            emissions are spread over several steps, e.g. after a flat start) or ``beam``;
            beam_size: its width.
        noise: noise added on the fly to training audio: a type (``white``, ``pink``, ``brown``,
            ``babble``), ``dir:PATH`` (a folder of recordings), a comma list of them
            (``white,pink,babble``: one drawn per utterance and epoch), or empty for clean training.
        snr: training SNR in dB, a range ``"0:15"`` drawn per utterance and epoch or one value
            ``"10"``. YAML 1.1 (and so the command line) reads an unquoted ``5:20`` as the base-60
            number 320; no SNR is that large, so such a number is read back as the range it was.
        clean_fraction: fraction of training utterances left clean in each epoch (drawn per
            utterance; 0: all noisy).
        noise_copies: 0: training noise drawn afresh every epoch; N: every utterance has N fixed
            noisy versions, cycled through by epoch, whose features are cached after their first
            use (``NoiseConfig.copies``; Kaldi's augmented copies): the noisy data path then costs
            what the clean one does.
        mix_speaker: two-speaker mixing (MultiTIMIT): scale of the opposite-gender partner
            utterance (fixed per utterance) added to every utterance, training and test (0: off;
            0.1 / 0.25 / 0.5).
        consistency_weight: (inherited) noisy-clean consistency training: with training noise or the
            mix, each batch also carries the utterances clean (cached features, no SpecAugment) and
            the CTC head on the noisy input is pulled toward its distribution on the clean one
            (:func:`hardalign.speech.ctc.frame_consistency`); the CTC baseline takes the same key.
        eval_noise: comma-separated test conditions ``TYPE:SNR`` (``white:10,babble:0,dir:PATH:5``)
            scored besides clean.
        specaug_freq, specaug_time: SpecAugment on the training features
            (``torchaudio.transforms.FrequencyMasking`` / ``TimeMasking``): the widest mask in mel
            bins (the same bins of the static, delta and delta-delta coefficients) and in 10 ms
            frames; 0: off. specaug_masks: masks of each kind per utterance.
        warp_freq: VTLP-style warp of the mel axis (Jaitly & Hinton 2013) on the training features:
            each utterance's bins are resampled at ``i * alpha``, ``alpha`` drawn per utterance and
            epoch from ``[1 - warp_freq, 1 + warp_freq]`` (the same warp in every delta order; log
            energy untouched); 0: off. A shorter or longer vocal tract, without recomputing features.
        warp_time: speed perturbation on the features: each utterance's 10 ms frames are resampled
            (linear interpolation) to ``1 / beta`` times as many, ``beta`` drawn per utterance and
            epoch from ``[1 - warp_time, 1 + warp_time]``; never below the frames the utterance
            needs to stay alignable (one step per label and EOS); 0: off.
        eval_limit: score only the first N utterances of a split (0: all; quick checks).
        eval_batch_size: utterances per decoding batch.
        preload: keep the training features in memory (clean training only).
        num_threads: ``torch.set_num_threads`` (0: leave torch's default).
    """

    data_dir: str = "exp/timit/data"
    model: str = "hardalign"
    phone_set: int = 61
    cmvn: str = "utterance"
    dynamic_range_db: float = 0.0
    compression: str = "log"
    frame_stack: int = 3
    ctc_layers: int = 0
    decoder: str = "greedy"
    beam_size: int = 4
    noise: str = ""
    snr: str = "0:15"
    clean_fraction: float = 0.0
    noise_copies: int = 0
    mix_speaker: float = 0.0
    eval_noise: str = ""
    specaug_freq: int = 0
    specaug_time: int = 0
    specaug_masks: int = 2
    warp_freq: float = 0.0
    warp_time: float = 0.0
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
        self.snr = _undo_base60(self.snr)
        check_noise_options(noise=self.noise, snr=self.snr, clean_fraction=self.clean_fraction, eval_noise=self.eval_noise,
                            mix_speaker=self.mix_speaker, noise_copies=self.noise_copies)
        for key in ("specaug_freq", "specaug_time", "specaug_masks"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 0")
        for key in ("warp_freq", "warp_time"):
            if not 0.0 <= getattr(self, key) < 0.5:
                raise ValueError(f"{key}={getattr(self, key)}: must be in [0, 0.5)")
        if self.consistency_weight and not NoiseConfig(noise=self.noise or "none", snr=self.snr, mix_speaker=self.mix_speaker).active:
            raise ValueError(f"consistency_weight={self.consistency_weight} compares noisy and clean input: it needs training noise "
                             "(--noise, e.g. --noise white,pink,babble --snr 0:15) or the mix (--mix-speaker 0.25)")


def warp_axis(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Resample the last axis of ``x`` at positions ``i * alpha`` (linear interpolation; beyond the
    last bin, the last bin): ``alpha > 1`` compresses the spectrum toward the low bins (a shorter
    vocal tract), ``alpha < 1`` stretches it.

    Example:
        >>> warp_axis(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), 0.5).tolist()
        [0.0, 0.5, 1.0, 1.5, 2.0]
        >>> warp_axis(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), 2.0).tolist()
        [0.0, 2.0, 4.0, 4.0, 4.0]
    """
    n = x.shape[-1]
    position = (torch.arange(n, dtype=x.dtype, device=x.device) * alpha).clamp(max=n - 1)
    low = position.floor().long().clamp(max=n - 1)
    high = (low + 1).clamp(max=n - 1)
    frac = position - low.to(x.dtype)
    return x.index_select(-1, low) * (1 - frac) + x.index_select(-1, high) * frac


def _undo_base60(snr: str) -> str:
    """``"320"`` -> ``"5:20"``: YAML 1.1 reads ``5:20`` (digits, colon, two digits) as 5 * 60 + 20.

    Only integers beyond any real SNR (|v| >= 60 dB) are read back; others are returned as given.

    Example:
        >>> _undo_base60("320"), _undo_base60("-305"), _undo_base60("10"), _undo_base60("0:15")
        ('5:20', '-5:5', '10', '0:15')
    """
    text = str(snr).strip()
    try:
        value = int(text)
    except ValueError:
        return text
    if abs(value) < 60:
        return text
    high, low = divmod(abs(value), 60)
    return f"{'-' if value < 0 else ''}{high}:{low}"


def parse_noise_conditions(text: str) -> list[tuple[str, float]]:
    """Parse ``"white:10,pink:0"`` into ``[("white", 10.0), ("pink", 0.0)]`` (``dir:PATH:SNR`` too).

    The same parser as the config check (:func:`hardalign.data.noise.parse_eval_noise`), without
    opening ``dir:`` folders again.

    Example:
        >>> parse_noise_conditions("white:10, babble:0")
        [('white', 10.0), ('babble', 0.0)]
        >>> parse_noise_conditions("")
        []
    """
    return parse_eval_noise(text, check=False)


def decode_batch(model: torch.nn.Module, batch: dict[str, Any], *, decoder: str = "greedy", beam_size: int = 4) -> list[Hypothesis]:
    """Decode one batch with either model family; returns one :class:`Hypothesis` per utterance."""
    features, lengths = batch["features"], batch["feature_lengths"]
    if isinstance(model, CTCRecognizer):
        return model.decode(features, lengths)
    if decoder == "beam":
        return beam_search(model, features, lengths, beam_size=beam_size)
    return greedy_decode(model, features, lengths, rule="median" if decoder == "median" else "step")


class SpeechTask:
    """The ``timit`` task (see :mod:`hardalign.train.tasks` for the contract)."""

    Config = SpeechTaskConfig
    metrics_to_minimize = ("per",)
    #: keys added since the first checkpoints were written, with the value those runs used (a
    #: stored config without them rebuilds the model they trained; see hardalign.train.run.load_run)
    legacy_defaults = {"posterior_kind": "recurrent", "posterior_encoder": "own", "ctc_label_prior": False, "ctc_emit_prior": False, "score_forced_emissions": False, "forced_emission_weight": 0.0, "ctc_prior_gradient": 1.0, "decision_recurrence": True}

    @classmethod
    def upgrade_stored_config(cls, stored: dict) -> dict:
        """A checkpoint's stored config with the noise keys of older runs spelled as today's.

        ``train_noise: TYPE:LOW:HIGH`` becomes ``noise: TYPE`` and ``snr: "LOW:HIGH"`` (empty: no
        noise); ``mix_scale`` becomes ``mix_speaker``. Called by
        :func:`hardalign.train.run.load_run` before it checks the keys.

        Example:
            >>> SpeechTask.upgrade_stored_config({"train_noise": "pink:0:15", "mix_scale": 0.25})
            {'noise': 'pink', 'snr': '0:15', 'mix_speaker': 0.25}
        """
        stored = dict(stored)
        if "train_noise" in stored:
            spec = str(stored.pop("train_noise") or "").strip()
            if spec:
                noise, snr = parse_noise_spec(spec, key="train_noise", check=False)
                stored.setdefault("noise", noise)
                stored.setdefault("snr", snr)
        if "mix_scale" in stored:
            stored.setdefault("mix_speaker", stored.pop("mix_scale"))
        return stored

    def __init__(self, config: SpeechTaskConfig, train_config: Any, *, device: torch.device, rank: int = 0, world_size: int = 1):
        from hardalign.data import FeatureConfig, Vocabulary

        self.config = config
        self.train_config = train_config
        self.device = device
        self.rank = rank
        self.world_size = world_size
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.features = FeatureConfig(stack=config.frame_stack, cmvn=config.cmvn, dynamic_range_db=float(config.dynamic_range_db),
                                      compression=config.compression)
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
        """A frozen evaluation condition as a :class:`hardalign.data.noise.NoiseConfig` (``None``
        when it adds nothing): noise ``kind`` at ``snr`` dB, plus the two-speaker mix when
        ``mix_speaker > 0``."""
        from hardalign.data.noise import NoiseConfig

        noise = NoiseConfig(noise=kind or "none", snr=snr if snr is not None else "10", mix_speaker=self.config.mix_speaker)
        return noise if noise.active else None

    def _train_noise(self):
        """The training condition: ``noise`` sources at ``snr``, ``clean_fraction`` left clean, the
        mix; every draw seeded by (training seed, epoch, utterance), so a resumed run replays it."""
        from hardalign.data.noise import NoiseConfig

        c = self.config
        noise = NoiseConfig(noise=c.noise or "none", snr=c.snr, mix_speaker=c.mix_speaker, clean_fraction=c.clean_fraction,
                            copies=c.noise_copies, seed=int(getattr(self.train_config, "seed", 0)))
        return noise if noise.active else None

    def dataset(self, split: str, noise=None):
        """The :class:`hardalign.data.SpeechDataset` of ``split`` (with a noise config or None)."""
        from hardalign.data import load_speech_dataset

        return load_speech_dataset(self.config.data_dir, split, features=self.features, noise=noise, phone_set=self.config.phone_set)

    @property
    def train_set(self):
        if self._train is None:
            self._train = self.dataset("train", self._train_noise())
            self._train.with_clean = self.config.consistency_weight > 0
        return self._train

    # ------------------------------------------------------------------ contract
    def build_model(self) -> torch.nn.Module:
        c = self.config
        input_dim = self.features.dim
        num_phones = len(self.vocab.symbols)
        if c.model == "ctc":
            return CTCRecognizer(
                input_dim, num_phones, hidden_size=c.hidden_size, num_layers=c.ctc_layers or c.encoder_layers,
                dropout=c.dropout, dropout_ramp_steps=c.dropout_ramp_steps, consistency_weight=c.consistency_weight,
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
            yield collate_speech(self._spec_augment(self._warp(items, epoch), epoch))

    def _frame_layout(self) -> tuple[int, int, int]:
        """``(stack, orders, bins)``: a stacked feature row is ``stack`` 10 ms frames, each of
        ``orders`` (static, delta, delta-delta) times ``bins`` (log energy + mel) coefficients."""
        orders = 1 + self.features.delta_order
        return self.features.stack, orders, self.features.base_dim // orders

    def _warp(self, items: list[dict], epoch: int) -> list[dict]:
        """Frequency (VTLP) and time (speed) warps of training items (``warp_freq`` / ``warp_time``;
        a no-op at 0), drawn from a generator seeded by (training seed, epoch, utterance): a
        resumed run replays them. The items themselves are not changed."""
        c = self.config
        if not (c.warp_freq or c.warp_time):
            return items
        from hardalign.data.noise import utterance_rng

        stack, orders, bins = self._frame_layout()
        energy = int(self.features.use_energy)
        out = []
        for item in items:
            rng = utterance_rng(self.train_config.seed, "warp", epoch, item["id"])
            alpha, beta = 1.0 + rng.uniform(-1.0, 1.0, size=2) * (c.warp_freq, c.warp_time)
            needed = (int(item["targets"].numel()) + 1) * stack  # one step per label and EOS

            def warped(features: torch.Tensor) -> torch.Tensor:
                frames = features.reshape(-1, orders, bins)  # [T' * stack, orders, bins]
                if c.warp_freq:
                    frames = torch.cat([frames[..., :energy], warp_axis(frames[..., energy:], float(alpha))], dim=-1)
                if c.warp_time:
                    count = max(needed, int(round(frames.shape[0] / float(beta))))
                    count -= count % stack
                    frames = F.interpolate(frames.permute(1, 2, 0), size=count, mode="linear", align_corners=True).permute(2, 0, 1)
                return frames.reshape(-1, stack * orders * bins).contiguous()

            # the clean copy (consistency training) gets the same warp: the two must stay frame for frame
            out.append({**item, **{key: warped(item[key]) for key in ("features", "clean_features") if key in item}})
        return out

    def _spec_augment(self, items: list[dict], epoch: int) -> list[dict]:
        """SpecAugment-style masks on training items (``specaug_freq`` / ``specaug_time``; a no-op at 0).

        Each item's stacked ``[T', stack * base_dim]`` features are viewed as ``[orders, bins,
        frames]`` (orders: static, delta, delta-delta; bins: energy + mel) so that a frequency mask
        blanks the same bins in every order and a time mask whole 10 ms frames. Masks are drawn
        from a generator seeded by (training seed, epoch, utterance): a resumed run replays them.
        The items themselves are not changed (preloaded features stay clean).
        """
        c = self.config
        if not (c.specaug_masks and (c.specaug_freq or c.specaug_time)):
            return items
        import torchaudio.transforms as AT

        from hardalign.data.noise import utterance_rng

        stack, orders, bins = self._frame_layout()
        base = orders * bins
        masks = [AT.FrequencyMasking(c.specaug_freq)] * bool(c.specaug_freq) + [AT.TimeMasking(c.specaug_time)] * bool(c.specaug_time)
        out = []
        for item in items:
            feats = item["features"]
            steps = feats.shape[0]
            x = feats.reshape(steps * stack, orders, bins).permute(1, 2, 0)  # [orders, bins, frames]
            seed = int(utterance_rng(self.train_config.seed, "specaugment", epoch, item["id"]).integers(2 ** 31))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for _ in range(c.specaug_masks):
                    for mask in masks:
                        x = mask(x)
            out.append({**item, "features": x.permute(2, 0, 1).reshape(steps, stack * base)})  # back to [T', stack * base]
        return out

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
        conditions: list[tuple[str, Any]] = [("", self._noise_config())]  # clean (or the speaker mix alone, mix_speaker > 0)
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
