"""One sharding mechanism: shard_batches and BucketBatchSampler split the same global batches across ranks."""

import pytest
import torch

from hardalign.data.sampling import BucketBatchSampler, epoch_generator, epoch_order, shard_batches

LENGTHS = [5, 80, 3, 41, 7, 60, 22, 9, 33, 70, 2, 15, 48, 51, 12, 30, 8]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_bucket_shards_partition_the_global_batches(world_size):
    single = list(BucketBatchSampler(LENGTHS, 2 * world_size, seed=5, bucket_size=2, drop_last=True))
    shards = [list(BucketBatchSampler(LENGTHS, 2, seed=5, bucket_size=2, drop_last=True, num_replicas=world_size, rank=r))
              for r in range(world_size)]
    assert all(len(shard) == len(single) for shard in shards)
    for number, batch in enumerate(single):
        assert sum((shards[r][number] for r in range(world_size)), []) == batch


def test_no_rank_gets_an_empty_batch_and_the_global_rng_is_untouched():
    state = torch.get_rng_state()
    shards = [list(BucketBatchSampler(LENGTHS, 4, seed=0, num_replicas=4, rank=r)) for r in range(4)]
    assert len({len(shard) for shard in shards}) == 1 and all(batch for shard in shards for batch in shard)
    assert {i for shard in shards for b in shard for i in b} == set(range(len(LENGTHS)))
    short = [list(shard_batches(9, 4, seed=0, epoch=0, rank=r, world_size=4, drop_last=False)) for r in range(4)]
    assert all(len(batch) >= 1 for shard in short for batch in shard)
    assert torch.equal(state, torch.get_rng_state())


def test_both_draw_the_epoch_order_from_the_same_generator():
    order = epoch_order(len(LENGTHS), epoch_generator(3, 1))
    assert torch.equal(torch.cat(list(shard_batches(len(LENGTHS), 1, seed=3, epoch=1))), order)
    sampler = BucketBatchSampler(LENGTHS, 1, seed=3, bucket_size=1)
    sampler.set_epoch(1)
    # one utterance per pool: no sorting; the batch order is a second draw of the same generator
    generator = epoch_generator(3, 1)
    first = epoch_order(len(LENGTHS), generator)
    assert [b[0] for b in sampler] == first[torch.randperm(len(LENGTHS), generator=generator)].tolist()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        BucketBatchSampler(LENGTHS, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BucketBatchSampler(LENGTHS, 0)
