"""Speech data: TIMIT preparation, phone sets, features, added noise and the offline corpus.

Public surface (everything a recipe needs)::

    from hardalign.data import (prepare_timit, build_synth_corpus, load_speech_dataset,
                                speech_dataloader, FeatureConfig, NoiseConfig, Vocabulary,
                                phone_error_rate)

* :func:`prepare_timit` / :func:`build_synth_corpus` write ``train/dev/test.jsonl`` manifests;
* :func:`load_speech_dataset` turns a manifest directory + :class:`FeatureConfig` (+ optional
  :class:`NoiseConfig`) into a :class:`SpeechDataset` whose items :func:`collate_speech` pads into
  ``{"features" [B, T, F], "feature_lengths" [B], "targets" [B, U], "target_lengths" [B], "ids"}``;
* :class:`Vocabulary`: id 0 = padding / CTC blank, symbols ``1..n``, ``eos_id = n + 1``;
* :func:`phone_error_rate` scores on 39 phones (Kaldi policy) with S/D/I counts;
* :func:`shard_batches` / :class:`BucketBatchSampler` (:mod:`hardalign.data.sampling`): the one
  epoch order and per-rank sharding of training batches every task uses.
"""

# Names are imported lazily (PEP 562) so that light users such as the synthesis worker process
# do not pay for importing torch/torchaudio.
_EXPORTS = {
    "AudioError": "hardalign.data.audio",
    "BucketBatchSampler": "hardalign.data.sampling",
    "CMVN": "hardalign.data.features",
    "ErrorCounts": "hardalign.data.scoring",
    "FeatureCache": "hardalign.data.cache",
    "FeatureConfig": "hardalign.data.features",
    "NoiseConfig": "hardalign.data.noise",
    "NoiseMixer": "hardalign.data.noise",
    "OnlineCMVN": "hardalign.data.features",
    "PHONE_SETS": "hardalign.data.phones",
    "PrepareError": "hardalign.data.timit",
    "PrepareResult": "hardalign.data.timit",
    "Problem": "hardalign.data.timit",
    "SpeechDataset": "hardalign.data.dataset",
    "SynthResult": "hardalign.data.synth",
    "TextTokenizer": "hardalign.data.tokenizer",
    "UnalignableError": "hardalign.data.dataset",
    "Vocabulary": "hardalign.data.phones",
    "audio_info": "hardalign.data.audio",
    "build_synth_corpus": "hardalign.data.synth",
    "collate_speech": "hardalign.data.dataset",
    "compute_cmvn": "hardalign.data.features",
    "extract_features": "hardalign.data.features",
    "fold_phones": "hardalign.data.phones",
    "load_speaker_list": "hardalign.data.phones",
    "load_speech_dataset": "hardalign.data.dataset",
    "num_frames": "hardalign.data.features",
    "phone_error_rate": "hardalign.data.scoring",
    "phone_map": "hardalign.data.phones",
    "phone_set": "hardalign.data.phones",
    "prepare_timit": "hardalign.data.timit",
    "read_audio": "hardalign.data.audio",
    "read_manifest": "hardalign.data.timit",
    "reference_token_count": "hardalign.data.scoring",
    "scan_timit": "hardalign.data.timit",
    "shard_batches": "hardalign.data.sampling",
    "speech_dataloader": "hardalign.data.dataset",
    "stack_frames": "hardalign.data.features",
    "write_sphere": "hardalign.data.audio",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hardalign.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "AudioError",
    "BucketBatchSampler",
    "CMVN",
    "ErrorCounts",
    "FeatureCache",
    "FeatureConfig",
    "NoiseConfig",
    "NoiseMixer",
    "OnlineCMVN",
    "PHONE_SETS",
    "PrepareError",
    "PrepareResult",
    "Problem",
    "SpeechDataset",
    "SynthResult",
    "TextTokenizer",
    "UnalignableError",
    "Vocabulary",
    "audio_info",
    "build_synth_corpus",
    "collate_speech",
    "compute_cmvn",
    "extract_features",
    "fold_phones",
    "load_speaker_list",
    "load_speech_dataset",
    "num_frames",
    "phone_error_rate",
    "phone_map",
    "phone_set",
    "prepare_timit",
    "read_audio",
    "read_manifest",
    "reference_token_count",
    "scan_timit",
    "shard_batches",
    "speech_dataloader",
    "stack_frames",
    "write_sphere",
]
