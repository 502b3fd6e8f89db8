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
* :func:`phone_error_rate` scores on 39 phones (Kaldi policy) with S/D/I counts.
"""

from hardalign.data.audio import AudioError, audio_info, read_audio, write_sphere
from hardalign.data.cache import FeatureCache
from hardalign.data.dataset import (
    BucketBatchSampler,
    SpeechDataset,
    UnalignableError,
    collate_speech,
    load_speech_dataset,
    speech_dataloader,
)
from hardalign.data.features import CMVN, FeatureConfig, compute_cmvn, extract_features, num_frames, stack_frames
from hardalign.data.phones import PHONE_SETS, Vocabulary, fold_phones, load_speaker_list, phone_map, phone_set
from hardalign.data.scoring import ErrorCounts, phone_error_rate, reference_token_count
from hardalign.data.timit import PrepareError, PrepareResult, Problem, prepare_timit, read_manifest, scan_timit

__all__ = [
    "AudioError",
    "BucketBatchSampler",
    "CMVN",
    "ErrorCounts",
    "FeatureCache",
    "FeatureConfig",
    "PHONE_SETS",
    "PrepareError",
    "PrepareResult",
    "Problem",
    "SpeechDataset",
    "UnalignableError",
    "Vocabulary",
    "audio_info",
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
    "speech_dataloader",
    "stack_frames",
    "write_sphere",
]
