"""Noise and the two-speaker mix as the speech task uses them (issue 11).

The frozen test conditions reach their SNR; the mix partner is fixed and of the other gender; the
old option spellings are errors naming the new ones (YAML, command line) and old checkpoints'
stored configs are translated; multi-condition draws are deterministic and cover every type and
the clean fraction; SpecAugment masks and per-utterance CMVN. On a tiny espeak-ng corpus (~5 s).
"""

from __future__ import annotations

import collections
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hardalign.data import read_audio, read_manifest
from hardalign.data.noise import NoiseConfig, NoiseMixer, measure_snr
from hardalign.speech.task import SpeechTask, SpeechTaskConfig, warp_axis
from hardalign.train.config import ConfigError, resolve_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from hardalign.data.synth import build_synth_corpus

    out = tmp_path_factory.mktemp("noise_corpus")
    build_synth_corpus(out, speakers=2, utterances=4, eval_speakers=2, eval_utterances=2, seed=3)
    return out


def _task(corpus, seed: int = 0, **options) -> SpeechTask:
    config = SpeechTaskConfig(data_dir=str(corpus), **options)
    return SpeechTask(config, SimpleNamespace(batch_size=2, seed=seed), device=torch.device("cpu"))


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr", [10.0, 0.0])
def test_frozen_test_conditions_reach_their_snr(corpus, kind, snr):
    task = _task(corpus, eval_noise=f"{kind}:{snr:g}")
    ds = task.dataset("test", task._noise_config(kind, snr=snr))
    frozen = corpus / "conditions" / f"test-{kind}-snr{snr:g}.jsonl"
    rows = {json.loads(line)["id"]: json.loads(line) for line in frozen.read_text().splitlines()}
    assert set(rows) == {r["id"] for r in ds.records}
    for record in ds.records:
        condition = ds.mixer.condition(record, epoch=5)
        assert condition == rows[record["id"]] and condition["snr"] == snr and condition["noise"] == kind
        clean, _ = read_audio(record["audio"])
        noisy = ds.mixer.apply(clean, record, condition)
        assert abs(measure_snr(clean, noisy.astype(np.float64) - clean) - snr) < 0.05


def test_mix_partner_fixed_and_of_the_other_gender(corpus):
    for split in ("train", "test"):
        records = read_manifest(corpus / f"{split}.jsonl")
        by_id = {r["id"]: r for r in records}
        first = NoiseMixer(NoiseConfig(mix_speaker=0.25), records, split=split, manifest_dir=corpus)
        again = NoiseMixer(NoiseConfig(mix_speaker=0.25), records, split=split, manifest_dir=corpus)
        for record in records:
            partners = {first.condition(record, epoch)["mix_partner"] for epoch in range(4)} | {again.condition(record, 9)["mix_partner"]}
            assert len(partners) == 1  # the same partner in every epoch and call, from a fresh mixer too
            partner = by_id[partners.pop()]
            assert {record["gender"], partner["gender"]} == {"f", "m"}
    # the task's mix (mix_speaker) is the same in training with noise on top: the partner does not move
    task = _task(corpus, mix_speaker=0.25, noise="white", snr="0:15")
    mixer = task.train_set.mixer
    record = mixer.records[sorted(mixer.records)[0]]
    assert len({mixer.condition(record, epoch)["mix_partner"] for epoch in range(3)}) == 1
    assert len({mixer.condition(record, epoch)["snr"] for epoch in range(3)}) == 3


@pytest.mark.parametrize(
    "yaml_text, argv, message",
    [
        ("train_noise: white:0:15\n", [], r"'train_noise' was retired: .*use --noise white --snr 0:15"),
        ("mix_scale: 0.25\n", [], r"'mix_scale' was renamed 'mix_speaker' \(--mix-speaker"),
        ("", ["--train-noise", "pink:0:15"], r"command line: key 'train_noise' was retired: .*--noise white --snr 0:15"),
        ("", ["--mix-scale", "0.25"], r"command line: key 'mix_scale' was renamed 'mix_speaker'"),
        ("noise: pink:0:15\n", [], r"noise='pink:0:15': the SNR is its own option: --noise pink --snr 0:15"),
    ],
)
def test_old_spellings_name_the_new_ones(tmp_path, yaml_text, argv, message):
    path = tmp_path / "old.yaml"
    path.write_text("task: timit\n" + yaml_text)
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_config(str(path), argv)
    assert "\n" not in str(caught.value)


def test_new_spellings_resolve(tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text('task: timit\nnoise: white,pink,babble\nsnr: "0:15"\nclean_fraction: 0.2\nmix_speaker: 0.25\n')
    task = resolve_config(str(path)).task
    assert (task.noise, task.snr, task.clean_fraction, task.mix_speaker) == ("white,pink,babble", "0:15", 0.2, 0.25)
    # YAML 1.1 reads an unquoted 5:20 as 320 (base 60), on the command line too: read back as the range
    assert resolve_config(None, ["--task", "timit", "--snr", "5:20"]).task.snr == "5:20"
    assert resolve_config(None, ["--task", "timit", "--snr", "10"]).task.snr == "10"


def test_old_checkpoint_configs_are_translated():
    stored = {"task": "timit", "train_noise": "dir:/corpora/noise:0:15", "mix_scale": 0.1, "eval_noise": "white:10"}
    assert SpeechTask.upgrade_stored_config(stored) == {"task": "timit", "noise": "dir:/corpora/noise", "snr": "0:15", "mix_speaker": 0.1,
                                                        "eval_noise": "white:10"}
    assert SpeechTask.upgrade_stored_config({"train_noise": ""}) == {}


def test_old_checkpoint_loads(corpus, tmp_path):
    from hardalign.train.checkpoint import load_checkpoint
    from hardalign.train.loop import train
    from hardalign.train.run import load_run
    from tests.speech.test_recipe import TINY_MODEL

    run = tmp_path / "run"
    config = resolve_config(None, ["--task", "timit", "--data-dir", str(corpus), "--out-dir", str(run), "--max-steps", "1",
                                   "--estimator", "vimco-seq", "--noise", "white", "--snr", "0:15", "--mix-speaker", "0.25", *TINY_MODEL])
    train(config)
    state = load_checkpoint(run / "checkpoint.pt")
    old = {k: v for k, v in state["config"].items() if k not in ("noise", "snr", "mix_speaker", "clean_fraction")}
    state["config"] = {**old, "train_noise": "white:0:15", "mix_scale": 0.25}  # what an older run stored
    torch.save(state, run / "old.pt")
    loaded = load_run(run / "old.pt")
    assert (loaded.config.task.noise, loaded.config.task.snr, loaded.config.task.mix_speaker) == ("white", "0:15", 0.25)


def test_multi_condition_draws(corpus):
    records = read_manifest(corpus / "train.jsonl")
    config = NoiseConfig("white,pink,babble", "0:15", clean_fraction=0.2, seed=7)
    mixer = NoiseMixer(config, records, split="train", manifest_dir=corpus)
    fresh = NoiseMixer(config, records, split="train", manifest_dir=corpus)
    epochs = 40
    draws = [(r["id"], e, mixer.condition(r, e)) for e in range(epochs) for r in records]
    assert all(fresh.condition(mixer.records[uid], e) == c for uid, e, c in draws)  # deterministic per (seed, epoch, utterance)
    kinds = collections.Counter("clean" if c is None else c["noise"] for _, _, c in draws)
    assert set(kinds) == {"clean", "white", "pink", "babble"}
    n = len(draws)  # 320 draws: the clean share is 0.2 within 4 standard errors (false failure ~1e-4)
    assert abs(kinds["clean"] / n - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5
    for kind in ("white", "pink", "babble"):
        assert abs(kinds[kind] / n - 0.8 / 3) < 4 * ((0.8 / 3) * (1 - 0.8 / 3) / n) ** 0.5
    snrs = [c["snr"] for _, _, c in draws if c is not None]
    assert 0 <= min(snrs) < 2 and 13 < max(snrs) <= 15
    per_utterance = collections.defaultdict(set)
    for uid, _, c in draws:
        per_utterance[uid].add("clean" if c is None else c["noise"])
    assert all(len(kinds_seen) > 1 for kinds_seen in per_utterance.values())  # redrawn per epoch
    other_seed = NoiseMixer(NoiseConfig("white,pink,babble", "0:15", clean_fraction=0.2, seed=8), records, split="train")
    assert [other_seed.condition(mixer.records[uid], e) for uid, e, _ in draws[:16]] != [c for _, _, c in draws[:16]]


def test_training_batches_replay_per_epoch(corpus):
    options = dict(noise="white,pink,babble", snr="0:15", clean_fraction=0.3, specaug_freq=8, specaug_time=10, cmvn="utterance")
    a, b = _task(corpus, seed=1, **options), _task(corpus, seed=1, **options)
    for epoch in (0, 1):
        for x, y in zip(a.train_batches(epoch), b.train_batches(epoch)):  # a resumed run replays epoch e
            assert x["ids"] == y["ids"] and torch.equal(x["features"], y["features"])
    first, second = next(iter(a.train_batches(0))), next(iter(a.train_batches(1)))
    assert not torch.equal(first["features"], second["features"])


def _augment_all(plain, augment):
    """The training items, ``augment(items, epoch=0)`` applied, checking that the items are not
    changed and that the result replays for the same epoch and differs for another."""
    ds = plain.train_set
    items = [ds[i] for i in range(len(ds))]
    before = [it["features"].clone() for it in items]
    out = augment(items, epoch=0)
    assert all(torch.equal(it["features"], f) for it, f in zip(items, before))  # inputs untouched
    assert all(torch.equal(x["features"], y["features"]) for x, y in zip(out, augment(items, epoch=0)))
    assert not all(torch.equal(x["features"], y["features"]) for x, y in zip(out, augment(items, epoch=1)))
    return items, before, out


def test_spec_augment_and_utterance_cmvn(corpus):
    plain = _task(corpus, cmvn="utterance")
    masked = _task(corpus, cmvn="utterance", specaug_freq=10, specaug_time=20, specaug_masks=2)
    items, _, out = _augment_all(plain, masked._spec_augment)
    stack, orders, bins = 3, 3, 41
    for item, aug in zip(items, out):
        feats = item["features"]
        # per-utterance CMVN: every coefficient has mean 0, deviation 1 over the utterance's frames
        frames = feats.reshape(-1, orders * bins)
        assert frames.mean(0).abs().max() < 0.05 and (frames.std(0, unbiased=False) - 1).abs().max() < 0.05
        x = aug["features"].reshape(-1, orders, bins)
        zero_bins = (x == 0).all(dim=0).all(dim=0)  # a frequency mask blanks a bin in every order and frame
        zero_frames = (x == 0).all(dim=2).all(dim=1)
        assert 0 < int(zero_bins.sum()) <= 2 * 10 and 0 < int(zero_frames.sum()) <= 2 * 20
        assert aug["features"].shape == feats.shape and aug["id"] == item["id"]
    assert plain._spec_augment(items, epoch=0) is items


def test_frequency_and_time_warps(corpus):
    plain = _task(corpus, cmvn="utterance")
    warped = _task(corpus, cmvn="utterance", warp_freq=0.1, warp_time=0.1)
    items, before, out = _augment_all(plain, warped._warp)
    stack, orders, bins = 3, 3, 41
    ratios = []
    for item, aug in zip(items, out):
        x, y = item["features"].reshape(-1, orders, bins), aug["features"].reshape(-1, orders, bins)
        assert aug["features"].shape[1] == item["features"].shape[1] and aug["id"] == item["id"]
        assert y.shape[0] % stack == 0 and y.shape[0] // stack >= item["targets"].numel() + 1  # still alignable
        ratios.append(y.shape[0] / x.shape[0])
        # both ends of the time axis stay where they were; the log energy is not warped in frequency
        torch.testing.assert_close(y[0, :, 0], x[0, :, 0])
        torch.testing.assert_close(y[-1, :, 0], x[-1, :, 0])
    assert min(ratios) >= 1 / 1.1 - 0.02 and max(ratios) <= 1 / 0.9 + 0.02 and max(ratios) - min(ratios) > 0.05
    assert plain._warp(items, epoch=0) is items
    # the frequency warp alone: the same frames, the mel bins resampled (identity at alpha = 1)
    only_freq = _task(corpus, cmvn="utterance", warp_freq=0.2)._warp(items[:3], epoch=0)
    for item, aug in zip(items[:3], only_freq):
        assert aug["features"].shape == item["features"].shape
        assert not torch.equal(aug["features"], item["features"])
    assert torch.equal(warp_axis(before[0], 1.0), before[0])
    batch = next(iter(warped.train_batches(0)))
    assert batch["features"].shape[-1] == stack * orders * bins
    with pytest.raises(ValueError, match="warp_time"):
        _task(corpus, warp_time=0.6)


def _white_noise_distance(corpus, **options) -> float:
    """Mean squared difference between the normalised, stacked features of the test split clean
    and at white noise 10 dB, for a task built with ``options``."""
    task = _task(corpus, eval_noise="white:10", **options)
    clean, noisy = task.dataset("test"), task.dataset("test", task._noise_config("white", snr=10.0))
    assert [r["id"] for r in clean.records] == [r["id"] for r in noisy.records]
    return float(np.mean([(clean[i]["features"] - noisy[i]["features"]).pow(2).mean().item() for i in range(len(clean))]))


def test_dynamic_range_floor_brings_clean_and_noisy_features_closer(corpus):
    """What ``dynamic_range_db`` is for: on synthesised speech, white noise at 10 dB moves the
    normalised features less with a 20 dB floor than without (measured: 0.82 against 1.18,
    mean squared difference of the normalised, stacked features)."""
    distance = {range_db: _white_noise_distance(corpus, dynamic_range_db=range_db) for range_db in (0.0, 20.0)}
    assert distance[20.0] < 0.85 * distance[0.0], distance


def test_pcen_brings_clean_and_noisy_features_closer(corpus):
    """What ``compression: pcen`` is for: each band divided by its own recent average, white noise
    at 10 dB moves the normalised features less than under log compression (on the offline
    corpus's test split: 0.84 against 1.20, mean squared difference of the normalised, stacked
    features)."""
    assert [_task(corpus, compression=c).features.compression for c in ("log", "pcen")] == ["log", "pcen"]
    distance = {compression: _white_noise_distance(corpus, compression=compression) for compression in ("log", "pcen")}
    assert distance["pcen"] < 0.85 * distance["log"], distance


def test_consistency_batches_carry_the_clean_utterance(corpus):
    """With ``consistency_weight`` the training batches also carry each utterance clean: the clean
    split's own features (no noise, no SpecAugment), frame for frame beside the noisy ones, warps
    applied to both alike; without training noise the option is an error."""
    options = dict(noise="white,pink", snr="0:5", clean_fraction=0.3, cmvn="utterance", specaug_freq=8, specaug_time=10)
    task = _task(corpus, consistency_weight=1.0, **options)
    clean = {task.train_set.records[i]["id"]: _task(corpus, cmvn="utterance").train_set[i]["features"] for i in range(len(task.train_set))}
    noisy_seen = 0
    for epoch in (0, 1):
        for batch in task.train_batches(epoch):
            assert batch["clean_features"].shape == batch["features"].shape
            for b, uid in enumerate(batch["ids"]):
                n = int(batch["feature_lengths"][b])
                torch.testing.assert_close(batch["clean_features"][b, :n], clean[uid], rtol=0, atol=0)
                assert not batch["clean_features"][b, n:].any()  # padded as the features are
                noisy_seen += not torch.equal(batch["features"][b, :n], clean[uid])
    assert noisy_seen > 0
    assert "clean_features" not in next(iter(_task(corpus, **options).train_batches(0)))  # off: not built
    warped = _task(corpus, consistency_weight=1.0, warp_time=0.2, **options)
    for batch in warped.train_batches(0):
        assert batch["clean_features"].shape == batch["features"].shape
    with pytest.raises(ValueError, match="consistency_weight=0.5 compares noisy and clean input: it needs training noise"):
        _task(corpus, consistency_weight=0.5)
    assert _task(corpus, consistency_weight=0.5, mix_speaker=0.25).config.consistency_weight == 0.5


def test_noise_copies_cycle_and_are_cached(corpus):
    """``noise_copies: N``: epoch e draws what a fresh run draws at epoch e % N (so the first N
    epochs are those of fresh noise), the features of a repeated draw come from the cache and equal
    the first computation exactly, and a bad count is an error naming the key."""
    records = read_manifest(corpus / "train.jsonl")
    fresh = NoiseMixer(NoiseConfig("white,pink,babble", "0:15", clean_fraction=0.2, seed=5), records, split="train")
    cycled = NoiseMixer(NoiseConfig("white,pink,babble", "0:15", clean_fraction=0.2, seed=5, copies=3), records, split="train")
    assert fresh.varies_per_epoch and not cycled.varies_per_epoch
    for r in records:
        assert [cycled.condition(r, e) for e in range(7)] == [fresh.condition(r, e % 3) for e in range(7)]
    assert any(fresh.condition(r, 3) != fresh.condition(r, 0) for r in records)  # fresh noise does not repeat

    options = dict(noise="white,pink,babble", snr="0:15", clean_fraction=0.2, cmvn="utterance")
    task = _task(corpus, seed=2, noise_copies=2, **options)
    ds = task.train_set
    noisy = [i for i in range(len(ds)) if ds.mixer.condition(ds.records[i], 0) is not None]
    assert noisy
    ds.set_epoch(0)
    first = {i: ds[i]["features"] for i in noisy}
    hits = ds.cache.hits
    ds.set_epoch(2)  # epoch 2 repeats epoch 0
    for i in noisy:
        assert torch.equal(ds[i]["features"], first[i])
    assert ds.cache.hits - hits == len(noisy)
    uncached = _task(corpus, seed=2, **options).train_set
    uncached.set_epoch(0)
    for i in noisy:  # the same draw as fresh noise at epoch 0
        assert torch.equal(uncached[i]["features"], first[i])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="noise_copies="):
            _task(corpus, noise_copies=bad, **options)
        with pytest.raises(ValueError, match="--noise-copies="):
            NoiseConfig("white", copies=bad)
