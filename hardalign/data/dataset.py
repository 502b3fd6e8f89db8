"""Speech dataset and collate: manifests in, padded batches out (bucketing: :mod:`hardalign.data.sampling`).

:func:`load_speech_dataset` is the one entry point a recipe needs::

    ds = load_speech_dataset("exp/data", "train", features=FeatureConfig(), noise=NoiseConfig("pink", "0:15"))
    loader = speech_dataloader(ds, batch_size=32, shuffle=True, seed=0)
    for epoch in range(n):
        loader.batch_sampler.set_epoch(epoch); ds.set_epoch(epoch)
        for batch in loader: ...

Each batch (:func:`collate_speech`) is a dict with ``features`` float ``[B, T, F]`` (normalised and
frame-stacked, zero-padded), ``feature_lengths`` long ``[B]``, ``targets`` long ``[B, U]`` (ids of
``ds.vocab``, padded with 0), ``target_lengths`` long ``[B]``, ``ids`` and ``speakers`` (lists of
str). Targets carry no EOS; models that emit one use ``ds.vocab.eos_id``.

Added noise and the two-speaker mix (:mod:`hardalign.data.noise`) are applied on the fly with
seeds derived from (seed, split, epoch, utterance id); evaluation splits use frozen conditions.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torchaudio.functional as AF
from torch.utils.data import DataLoader, Dataset

from hardalign.data.audio import read_audio
from hardalign.data.cache import FeatureCache
from hardalign.data.features import CMVN, FeatureConfig, extract_features, load_cmvn, num_frames, stack_frames
from hardalign.data.phones import PHONE_SETS, Vocabulary, fold_phones
from hardalign.data.sampling import BucketBatchSampler
from hardalign.data.timit import SPLITS, read_manifest

__all__ = [
    "SpeechDataset",
    "UnalignableError",
    "collate_speech",
    "load_speech_dataset",
    "speech_dataloader",
]

log = logging.getLogger(__name__)

_TARGETS = ("phones", "chars", "bpe")


class UnalignableError(ValueError):
    """Utterances with fewer model steps than target labels (+ EOS) cannot be aligned."""


@dataclass(eq=False, repr=False)
class SpeechDataset(Dataset):
    """Utterances of one split as ``{"id", "speaker", "features" [T, F], "targets" [U]}`` items.

    Build it with :func:`load_speech_dataset`; the constructor takes already-loaded parts.

    Attributes:
        records: the manifest records (after any skipping).
        vocab: the target :class:`~hardalign.data.phones.Vocabulary`.
        lengths: model steps per utterance (known without reading audio), for bucketing.
        skipped: ``(id, steps, labels)`` of utterances left out as too short (``on_short="skip"``).
        with_clean: items also carry ``clean_features``, the utterance without its training
            noise or mix (the teacher's input of consistency training; cached, so cheap).
    """

    records: list[dict]
    _: KW_ONLY
    split: str
    vocab: Vocabulary
    features: FeatureConfig
    target_fn: Callable[[dict], list[int]]
    cmvn: CMVN | None = None
    cache: FeatureCache | None = None
    mixer: Any = None
    with_clean: bool = False
    epoch: int = field(default=0, init=False)
    skipped: list[tuple[str, int, int]] = field(default_factory=list, init=False)
    lengths: list[int] = field(init=False)

    def __post_init__(self):
        self.lengths = [self.num_steps(r) for r in self.records]

    def num_steps(self, record: dict) -> int:
        n = record["num_samples"]
        if record["sample_rate"] != self.features.sample_rate:
            n = math.ceil(n * self.features.sample_rate / record["sample_rate"])
        return num_frames(n, self.features)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose noise draws are used (training noise differs per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def load_waveform(self, record: dict) -> torch.Tensor:
        """Clean ``[N]`` float32 samples at the feature sample rate."""
        samples, rate = read_audio(record["audio"])
        wav = torch.from_numpy(samples)
        if rate != self.features.sample_rate:
            wav = AF.resample(wav, rate, self.features.sample_rate)
        return wav

    def raw_features(self, record: dict, condition: dict | None = None) -> torch.Tensor:
        """Unnormalised, unstacked ``[T, base_dim]`` features under a noise ``condition`` (None = clean).

        Clean features and fixed conditions (dev/test, the mix partner) are cached; training noise
        drawn afresh every epoch is not (each entry would be used once).
        """
        cache = self.cache
        if condition is not None and self.mixer is not None and self.mixer.varies_per_epoch:
            cache = None
        if cache is not None:
            feats = cache.get(record["audio"], self.features, condition)
            if feats is not None:
                return feats
        wav = self.load_waveform(record)
        if condition is not None:
            wav = torch.from_numpy(self.mixer.apply(wav.numpy(), record, condition))
        feats = extract_features(wav, self.features)
        if cache is not None:
            cache.put(record["audio"], self.features, feats, condition)
        return feats

    def _model_input(self, feats: torch.Tensor, record: dict) -> torch.Tensor:
        """Raw ``[T, base_dim]`` features -> the model's ``[T', stack * base_dim]`` (CMVN, stacking)."""
        if self.cmvn is not None:
            feats = self.cmvn(feats, record["speaker"])
        return stack_frames(feats, self.features.stack)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        condition = self.mixer.condition(record, self.epoch) if self.mixer is not None else None
        feats = self._model_input(self.raw_features(record, condition), record)
        targets = torch.tensor(self.target_fn(record), dtype=torch.long)
        item = {"id": record["id"], "speaker": record["speaker"], "features": feats, "targets": targets}
        if self.with_clean:  # the same utterance without its noise or mix (consistency training)
            item["clean_features"] = feats if condition is None else self._model_input(self.raw_features(record), record)
        return item

    def collate(self, items: Sequence[dict]) -> dict:
        """Same as :func:`collate_speech`."""
        return collate_speech(items)


def collate_speech(items: Sequence[dict]) -> dict:
    """Pad dataset items into a batch.

    Returns:
        dict with ``features`` ``[B, T, F]`` (zero-padded), ``feature_lengths`` ``[B]`` long,
        ``targets`` ``[B, U]`` long padded with 0, ``target_lengths`` ``[B]`` long, ``ids`` and
        ``speakers`` (lists of str); with ``clean_features`` in every item (a dataset built
        ``with_clean``), those too, padded as ``features``.

    Example:
        >>> b = collate_speech([{"id": "a", "speaker": "s", "features": torch.ones(3, 2), "targets": torch.tensor([4, 5])},
        ...                     {"id": "b", "speaker": "s", "features": torch.ones(1, 2), "targets": torch.tensor([6])}])
        >>> b["features"].shape, b["feature_lengths"].tolist(), b["targets"].tolist()
        (torch.Size([2, 3, 2]), [3, 1], [[4, 5], [6, 0]])
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    feats = [it["features"] for it in items]
    targets = [it["targets"] for it in items]
    batch = {
        "features": torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
        "feature_lengths": torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
        "targets": torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=0),
        "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
        "ids": [it["id"] for it in items],
        "speakers": [it["speaker"] for it in items],
    }
    if all("clean_features" in it for it in items):
        batch["clean_features"] = torch.nn.utils.rnn.pad_sequence([it["clean_features"] for it in items], batch_first=True)
    return batch


class _PhoneTargets:
    """record -> phone ids (a class, not a closure, so datasets pickle into spawned workers)."""

    def __init__(self, vocab: Vocabulary, phone_set: int):
        self.vocab, self.phone_set = vocab, phone_set

    def __call__(self, record: dict) -> list[int]:
        return self.vocab.encode(fold_phones(record["phones"], self.phone_set))


class _TextTargets:
    """record -> sentencepiece ids of its text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, record: dict) -> list[int]:
        return self.tokenizer.encode(record["text"])

    def __getstate__(self):
        return {"model_file": str(self.tokenizer.model_file)}

    def __setstate__(self, state):
        from hardalign.data.tokenizer import TextTokenizer

        self.tokenizer = TextTokenizer(state["model_file"])


def load_speech_dataset(manifest_dir: str | os.PathLike, split: str, *, features: FeatureConfig | None = None,
                        noise=None, targets: str = "phones", phone_set: int = 61, bpe_vocab_size: int = 200,
                        cache_dir: str | os.PathLike | None = "auto", on_short: str = "error",
                        limit: int | None = None) -> SpeechDataset:
    """Build the dataset of one prepared split.

    Args:
        manifest_dir: directory written by ``hardalign prepare timit`` / ``prepare synth``.
        split: ``"train"``, ``"dev"`` or ``"test"``.
        features: front-end options (default :class:`FeatureConfig`: 123-dim fbank+deltas, global
            CMVN, 3-frame stacking -> 369 dims).
        noise: a :class:`hardalign.data.noise.NoiseConfig` (or None for clean audio).
        targets: ``"phones"`` (``phone_set`` phones, ``q`` deleted), ``"chars"`` or ``"bpe"``
            (sentencepiece on the ``text`` field, model trained on the train split and saved in
            ``manifest_dir``).
        phone_set: 61 (60 labels after deleting ``q``), 48 or 39.
        bpe_vocab_size: sentencepiece vocabulary for ``targets="bpe"``.
        cache_dir: feature cache directory; ``"auto"`` = ``manifest_dir/cache``, None = no cache.
        on_short: what to do with utterances that have fewer steps than labels + 1 (the EOS):
            ``"error"`` (raise :class:`UnalignableError` listing them) or ``"skip"`` (leave them
            out, logged and listed in ``dataset.skipped``).
        limit: keep only the first ``limit`` utterances (debugging).

    Returns:
        a :class:`SpeechDataset`; use ``dataset.collate`` (or :func:`collate_speech`) as the
        DataLoader's ``collate_fn`` and ``dataset.lengths`` for bucketing.

    Raises:
        FileNotFoundError: the manifest is missing.
        ValueError: an unknown split, targets or phone set.
        UnalignableError: see ``on_short``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if targets not in _TARGETS:
        raise ValueError(f"targets must be one of {_TARGETS}, got {targets!r}")
    if phone_set not in PHONE_SETS:
        raise ValueError(f"phone_set must be one of {PHONE_SETS}, got {phone_set!r}")
    if on_short not in ("error", "skip"):
        raise ValueError(f"on_short must be 'error' or 'skip', got {on_short!r}")
    manifest_dir = Path(manifest_dir)
    features = features or FeatureConfig()
    records = read_manifest(manifest_dir / f"{split}.jsonl")
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{manifest_dir / (split + '.jsonl')} holds no utterances")
    if targets == "phones":
        vocab = Vocabulary.phones(phone_set)
        target_fn = _PhoneTargets(vocab, phone_set)
    else:
        from hardalign.data.tokenizer import load_or_train_tokenizer

        tok = load_or_train_tokenizer(manifest_dir, targets, vocab_size=bpe_vocab_size)
        vocab = tok.vocab
        target_fn = _TextTargets(tok)

    cache = None
    if cache_dir == "auto":
        cache = FeatureCache(manifest_dir / "cache")
    elif cache_dir is not None:
        cache = FeatureCache(cache_dir)

    mixer = None
    if noise is not None and noise.active:
        from hardalign.data.noise import NoiseMixer

        mixer = NoiseMixer(noise, records, split=split, manifest_dir=manifest_dir,
                           sample_rate=features.sample_rate)

    manifests: dict[str, list[dict]] = {split: records}

    def records_of(name: str) -> list[dict]:
        if name not in manifests:
            manifests[name] = read_manifest(manifest_dir / f"{name}.jsonl")
        return manifests[name]

    ds = SpeechDataset(records, split=split, vocab=vocab, features=features, target_fn=target_fn, cache=cache, mixer=mixer)
    ds.cmvn = load_cmvn(manifest_dir, features, split, features_of=lambda r: ds.raw_features(r), records_of=records_of)

    short = []
    for rec, steps in zip(records, ds.lengths):
        n_labels = len(target_fn(rec))
        if steps < n_labels + 1:
            short.append((rec["id"], steps, n_labels))
    if short:
        listing = ", ".join(f"{i} ({s} steps < {n} labels + EOS)" for i, s, n in short[:20])
        more = f" and {len(short) - 20} more" if len(short) > 20 else ""
        if on_short == "error":
            raise UnalignableError(f"{len(short)} utterance(s) of {split} have fewer steps than labels + EOS and cannot "
                                   f"be aligned: {listing}{more}; pass on_short='skip' to leave them out")
        log.warning("leaving out %d unalignable utterance(s) of %s: %s%s", len(short), split, listing, more)
        bad = {i for i, _, _ in short}
        keep = [k for k, r in enumerate(records) if r["id"] not in bad]
        ds.records = [records[k] for k in keep]
        ds.lengths = [ds.lengths[k] for k in keep]
        ds.skipped = short
    return ds


def speech_dataloader(dataset: SpeechDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                      bucket: bool = True, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                      drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` with length bucketing (call ``loader.batch_sampler.set_epoch(e)``).

    Args:
        dataset: from :func:`load_speech_dataset`.
        batch_size: utterances per batch.
        shuffle: reshuffle per epoch (training).
        seed: sampler seed.
        bucket: sort by length inside pools (less padding); False = plain (shuffled) order.
        num_workers: DataLoader worker processes.
        rank, world_size: DDP sharding.
        drop_last: drop a final short batch.
    """
    sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=shuffle, seed=seed,
                                 bucket_size=50 if bucket else 1, drop_last=drop_last,
                                 num_replicas=world_size, rank=rank)
    if not bucket and not shuffle:
        sampler.lengths = [0] * len(dataset.lengths)  # keep manifest order
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_speech, num_workers=num_workers)

