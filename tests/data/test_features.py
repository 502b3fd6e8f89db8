"""Features, CMVN, cache, dataset / collate / bucketing."""

from __future__ import annotations

import math

import pytest
import torch

from hardalign.data import (
    BucketBatchSampler,
    FeatureCache,
    FeatureConfig,
    OnlineCMVN,
    UnalignableError,
    extract_features,
    load_speech_dataset,
    num_frames,
    read_manifest,
    speech_dataloader,
    stack_frames,
)


@pytest.mark.parametrize("frontend", ["kaldi", "librosa"])
@pytest.mark.parametrize("n", [400, 401, 559, 560, 16000, 12345])
def test_fbank_frame_count(frontend, n):
    config = FeatureConfig(frontend=frontend)
    feats = extract_features(0.1 * torch.randn(n), config)
    assert feats.shape == (1 + (n - 400) // 160, 123)
    assert torch.isfinite(feats).all()
    assert num_frames(n, config, stacked=False) == feats.shape[0]


def test_short_signal_has_no_frames():
    assert extract_features(torch.zeros(399)).shape == (0, 123)
    assert num_frames(399) == 0


def test_frontends_agree_roughly():
    # a chirp: both front ends should see the same energy contour and mel pattern
    t = torch.arange(16000) / 16000
    wav = 0.3 * torch.sin(2 * torch.pi * (200 + 3000 * t) * t)
    k = extract_features(wav, FeatureConfig(delta_order=0))
    lib = extract_features(wav, FeatureConfig(frontend="librosa", delta_order=0))
    corr = torch.corrcoef(torch.stack([k[:, 1:].flatten(), lib[:, 1:].flatten()]))[0, 1]
    assert corr > 0.9
    assert torch.corrcoef(torch.stack([k[:, 0], lib[:, 0]]))[0, 1] > 0.99


def test_deltas_are_dither_free_and_deterministic():
    wav = 0.1 * torch.randn(8000)
    a, b = extract_features(wav), extract_features(wav)
    assert torch.equal(a, b)
    assert FeatureConfig().dim == 369 and FeatureConfig(delta_order=0, stack=1).dim == 41


def test_stack_frames():
    x = torch.arange(14.0).reshape(7, 2)
    s = stack_frames(x, 3)
    assert s.shape == (3, 6)
    assert s[1].tolist() == [6, 7, 8, 9, 10, 11]
    assert s[2].tolist() == [12, 13, 12, 13, 12, 13]  # last frame repeated
    assert stack_frames(x, 1).shape == (7, 2)


def test_dataset_batches_follow_contract(prepared):
    ds = load_speech_dataset(prepared, "train")
    assert len(ds) == 3 and ds.vocab.eos_id == 61
    assert (prepared / f"cmvn-{ds.features.extraction_key()}-global.pt").is_file()
    loader = speech_dataloader(ds, batch_size=2, shuffle=True, seed=1)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"]) == [r["id"] for r in ds.records]
    b = batches[0]
    B = len(b["ids"])
    assert b["features"].dtype == torch.float32 and b["features"].shape[0] == B and b["features"].shape[2] == 369
    assert b["feature_lengths"].dtype == torch.long and b["targets"].dtype == torch.long
    assert b["features"].shape[1] == int(b["feature_lengths"].max())
    for k in range(B):
        rec = next(r for r in ds.records if r["id"] == b["ids"][k])
        assert b["feature_lengths"][k] == -(-(1 + (rec["num_samples"] - 400) // 160) // 3)
        assert b["target_lengths"][k] == 10  # 11 labels minus q
        assert (b["targets"][k, b["target_lengths"][k]:] == 0).all()
        assert (b["features"][k, b["feature_lengths"][k]:] == 0).all()
        assert ds.vocab.decode(b["targets"][k])[:2] == ["h#", "sh"]
    # global CMVN from train: normalised train features have ~zero mean, unit variance
    allf = torch.cat([ds[i]["features"][:, :123] for i in range(3)])
    assert allf.mean(0).abs().max() < 0.35
    dev = load_speech_dataset(prepared, "dev", targets="phones", phone_set=39)
    assert dev.vocab.eos_id == 40 and max(dev[0]["targets"].tolist()) < 40


def test_per_speaker_cmvn(prepared):
    ds = load_speech_dataset(prepared, "dev", features=FeatureConfig(cmvn="speaker"))
    key = ds.features.extraction_key()
    assert (prepared / f"cmvn-{key}-speaker-dev.pt").is_file()
    feats = torch.cat([stack_frames(ds.cmvn(ds.raw_features(r), r["speaker"]), 1) for r in ds.records])
    assert feats.mean(0).abs().max() < 1e-3  # one speaker in dev: its own statistics centre it exactly
    assert (feats.std(0) - 1).abs().max() < 1e-2


def _online_cmvn_loop(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, prior: float, window: int) -> torch.Tensor:
    """Frame by frame, in float64: the reference for the vectorised OnlineCMVN."""
    x, mean, std = x.double(), mean.double(), std.double()
    out = []
    for t in range(x.shape[0]):
        seen = x[max(0, t + 1 - window): t + 1]
        count = seen.shape[0] + prior
        m = (seen.sum(0) + prior * mean) / count
        second = ((seen * seen).sum(0) + prior * (std ** 2 + mean ** 2)) / count
        out.append((x[t] - m) / (second - m ** 2).sqrt())
    return torch.stack(out)


@pytest.mark.parametrize("window", [600, 7])
def test_online_cmvn_is_causal_and_matches_a_loop(window):
    gen = torch.Generator().manual_seed(0)
    x = 3 + 2 * torch.randn(40, 5, generator=gen)
    mean, std = torch.zeros(5), torch.ones(5)
    cmvn = OnlineCMVN(mean, std, prior_frames=10, window=window)
    out = cmvn(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), _online_cmvn_loop(x, mean, std, 10, window), rtol=1e-5, atol=1e-5)
    changed = x.clone()
    changed[25:] += 100.0  # the future must not change the past
    torch.testing.assert_close(cmvn(changed)[:25], out[:25])
    assert not torch.allclose(cmvn(changed)[25:], out[25:])
    # a negligible prior over the whole utterance: the last frame is normalised as by its own statistics
    whole = OnlineCMVN(mean, std, prior_frames=1e-9, window=600)(x)[-1]
    torch.testing.assert_close(whole, (x[-1] - x.mean(0)) / x.std(0, unbiased=False), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prior_frames"):
        OnlineCMVN(mean, std, prior_frames=0)


def test_online_cmvn_reads_the_global_statistics(prepared):
    ds = load_speech_dataset(prepared, "dev", features=FeatureConfig(cmvn="online"))
    assert isinstance(ds.cmvn, OnlineCMVN)
    key = ds.features.extraction_key()
    state = torch.load(prepared / f"cmvn-{key}-global.pt", weights_only=True)
    torch.testing.assert_close(ds.cmvn.mean, state["mean"].double())
    first = ds.raw_features(ds.records[0])[:1]
    # frame 0 with the default prior of 200 frames is within 1/201 of the global normalisation
    expected = (first - state["mean"]) / state["std"]
    assert (ds.cmvn(first) - expected).abs().max() < 0.1 * expected.abs().max() + 0.05


def test_dynamic_range_floor():
    from hardalign.data.features import floor_dynamic_range

    x = torch.tensor([[0.0, 5.0], [10.0, 5.0], [10.0, 5.0], [10.0, 5.0]])
    floored = floor_dynamic_range(x, 10.0)  # 10 dB = ln(10) in natural-log power
    assert torch.allclose(floored[:, 0], torch.tensor([10.0 - 2.302585, 10.0, 10.0, 10.0]))
    assert torch.equal(floored[:, 1], x[:, 1])  # a flat band is above its own floor
    assert FeatureConfig().extraction_key() == FeatureConfig(dynamic_range_db=0.0).extraction_key()
    assert FeatureConfig().extraction_key() != FeatureConfig(dynamic_range_db=20.0).extraction_key()
    with pytest.raises(ValueError, match="dynamic_range_db"):
        FeatureConfig(dynamic_range_db=-1.0)


def test_pcen_matches_its_recurrence_in_float64():
    """``compression="pcen"``: librosa's PCEN of the exp'd log energies against the recurrence written
    out in float64 (smoother M_t = (1 - s) M_{t-1} + s E_t from M_0 = E_0, s from the 0.4 s time
    constant at a 10 ms hop; out = (E / (eps + M)^0.98 + 2)^0.5 - sqrt 2)."""
    from hardalign.data.features import pcen

    torch.manual_seed(0)
    log_e = 3.0 * torch.randn(50, 3, dtype=torch.float64) + 10.0
    frames = 0.4 * 16000 / 160
    s = (math.sqrt(1 + 4 * frames**2) - 1) / (2 * frames**2)
    energies = log_e.exp()
    smooth = torch.empty_like(energies)
    smooth[0] = energies[0]
    for t in range(1, len(energies)):
        smooth[t] = (1 - s) * smooth[t - 1] + s * energies[t]
    expected = (energies / (1e-6 + smooth) ** 0.98 + 2.0) ** 0.5 - math.sqrt(2.0)
    torch.testing.assert_close(pcen(log_e.float()).double(), expected, rtol=1e-4, atol=1e-5)
    # a stationary band maps near the same value at levels 87 dB apart; log power moves by 20
    flat = pcen(torch.tensor([[0.0, 20.0]]).expand(200, 2).contiguous())
    assert 0.3 < flat[-1, 0] < flat[-1, 1] < 0.5


def test_pcen_config():
    config = FeatureConfig(compression="pcen")
    feats = extract_features(0.1 * torch.randn(16000), config)
    assert feats.shape == (98, 123) and torch.isfinite(feats).all()
    assert FeatureConfig().extraction_key() == FeatureConfig(compression="log").extraction_key()
    assert config.extraction_key() != FeatureConfig().extraction_key()
    with pytest.raises(ValueError, match="compression must be one of"):
        FeatureConfig(compression="cube-root")
    with pytest.raises(ValueError, match="dynamic_range_db"):
        FeatureConfig(compression="pcen", dynamic_range_db=20.0)


def test_cache_reuse_and_keys(prepared, tmp_path):
    cache_dir = tmp_path / "cache"
    ds = load_speech_dataset(prepared, "train", cache_dir=cache_dir)
    first = ds[0]["features"]
    hits = ds.cache.hits
    assert torch.equal(ds[0]["features"], first)
    assert ds.cache.hits == hits + 1
    assert not list(cache_dir.rglob("*.tmp"))
    rec = ds.records[0]
    cache = FeatureCache(cache_dir)
    assert cache.get(rec["audio"], FeatureConfig()) is not None
    assert cache.get(rec["audio"], FeatureConfig(num_mel_bins=23)) is None
    assert cache.get(rec["audio"], FeatureConfig(), {"noise": "white", "snr": 5.0}) is None
    # a cache entry replaced by garbage (e.g. an interrupted copy) is a miss, not a crash
    path = cache._path(cache.key(rec["audio"], FeatureConfig()))
    path.write_bytes(b"\x93NUMPY garbage")
    assert cache.get(rec["audio"], FeatureConfig()) is None


def test_bucketing_and_sharding():
    lengths = [5, 80, 3, 41, 7, 60, 22, 9, 33, 70, 2]
    s = BucketBatchSampler(lengths, 3, shuffle=True, seed=0, bucket_size=50)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:  # one pool: batches are contiguous runs in sorted order
        assert max(lengths[i] for i in b) <= min(lengths[i] for i in b) + 40
    s.set_epoch(1)
    assert list(s) != batches or len(batches) == 1
    shards = [list(BucketBatchSampler(lengths, 2, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert {i for sh in shards for b in sh for i in b} == set(range(len(lengths)))


def test_unalignable_is_reported(prepared, tmp_path):
    # 8000 samples -> 17 steps at stack 3 but only 10 labels; stacking 8 frames leaves 7 steps
    with pytest.raises(UnalignableError, match="fewer steps than labels"):
        load_speech_dataset(prepared, "train", features=FeatureConfig(stack=8), cache_dir=None)
    ds = load_speech_dataset(prepared, "train", features=FeatureConfig(stack=8), cache_dir=None, on_short="skip")
    assert len(ds) + len(ds.skipped) == 3 and ds.skipped


def test_bad_arguments_are_named(prepared, tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_speech_dataset(prepared, "valid")
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_speech_dataset(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="frontend"):
        FeatureConfig(frontend="mfcc")
    assert len(read_manifest(prepared / "train.jsonl")) == 3


def test_dataset_pickles_for_worker_processes(prepared):
    import pickle

    from hardalign.data import NoiseConfig

    for kwargs in ({}, {"targets": "chars"}, {"noise": NoiseConfig("white", 5)}):
        ds = load_speech_dataset(prepared, "train", cache_dir=None, **kwargs)
        again = pickle.loads(pickle.dumps(ds))
        assert torch.equal(again[1]["features"], ds[1]["features"])
        assert torch.equal(again[1]["targets"], ds[1]["targets"])
