"""The task registry follows the contract; shard_batches splits global batches exactly."""

import dataclasses

import pytest
import torch

from hardalign.train import TASKS, TRAIN_KEYS, get_task_class, resolve_config, shard_batches


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registered_task_follows_the_contract(name):
    task_class = get_task_class(name)
    assert dataclasses.is_dataclass(task_class.Config), f"{name}: Config must be a dataclass"
    for f in dataclasses.fields(task_class.Config):
        assert f.default is not dataclasses.MISSING, f"{name}: Config.{f.name} needs a default"
        assert f.name not in TRAIN_KEYS, f"{name}: Config.{f.name} clashes with a trainer key"
    for method in ("build_model", "train_batches", "evaluate"):
        assert callable(getattr(task_class, method, None)), f"{name}: missing {method}"
    # every field type is one the config parser understands, and defaults pass their own checks
    config = resolve_config({"task": name})
    assert isinstance(config.task, task_class.Config)


def test_unknown_task_lists_registered_ones():
    with pytest.raises(ValueError, match="registered tasks"):
        get_task_class("speech")


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_shards_partition_each_global_batch(world_size):
    single = list(shard_batches(37, 8, seed=3, epoch=2))
    shards = [list(shard_batches(37, 8, seed=3, epoch=2, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len(single) == 4 and all(len(s) == 4 for s in shards)  # 37 // 8, last partial batch dropped
    for number, batch in enumerate(single):
        assert torch.equal(torch.cat([shards[r][number] for r in range(world_size)]), batch)
    # a new epoch is a new order; the same (seed, epoch) replays it; the global RNG is untouched
    state = torch.get_rng_state()
    assert not torch.equal(torch.cat(single), torch.cat(list(shard_batches(37, 8, seed=3, epoch=3))))
    assert torch.equal(torch.cat(single), torch.cat(list(shard_batches(37, 8, seed=3, epoch=2))))
    assert torch.equal(state, torch.get_rng_state())


def test_shard_errors():
    with pytest.raises(ValueError, match="divisible by world_size=3"):
        next(shard_batches(10, 8, seed=0, epoch=0, rank=0, world_size=3))
    assert [len(b) for b in shard_batches(10, 4, seed=0, epoch=0, drop_last=False)] == [4, 4, 2]
