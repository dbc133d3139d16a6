"""Seeded, resumable training streams: order and augmentation are functions of (seed, epoch, position)."""

from __future__ import annotations

import torch

from semiseg.data.transforms import build_train_transform
from semiseg.engine.sampling import EpochBatchSampler, ShardSampler, TrainStream

from conftest import TinyShapes


def dataset(n=10):
    return TinyShapes("train", length=n, size=32,
                      transform=build_train_transform(24, scale_range=(0.6, 1.4), hflip=True))


def take(stream, k):
    return [next(stream) for _ in range(k)]


def test_stream_is_reproducible_and_crosses_epochs():
    a = take(TrainStream(dataset(), 3, seed=5), 7)  # 3 batches per epoch -> 2+ epochs
    b = take(TrainStream(dataset(), 3, seed=5), 7)
    for x, y in zip(a, b):
        assert x["name"] == y["name"] and torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    epoch0 = {n for batch in a[:3] for n in batch["name"]}
    assert len(epoch0) == 9  # no repeats within an epoch; the 10th sample is dropped (incomplete batch)
    assert [x["name"] for x in a[:3]] != [x["name"] for x in a[3:6]]  # a new permutation each epoch
    c = take(TrainStream(dataset(), 3, seed=6), 3)
    assert [x["name"] for x in c] != [x["name"] for x in a[:3]]


def test_resumed_stream_continues_exactly_and_ignores_global_rng():
    straight = take(TrainStream(dataset(), 3, seed=0), 8)
    first = TrainStream(dataset(), 3, seed=0)
    take(first, 5)
    state = first.state_dict()
    assert state == {"epoch": 1, "batch": 2}
    torch.manual_seed(12345)  # whatever the global RNG does, augmentation is seeded per sample
    resumed = TrainStream(dataset(), 3, seed=0)
    resumed.load_state_dict(state)
    for x, y in zip(take(resumed, 3), straight[5:]):
        assert x["name"] == y["name"] and torch.equal(x["image"], y["image"])


def test_loading_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(TrainStream(dataset(), 3, seed=0), 2)
    assert torch.equal(torch.rand(3), expected)


def test_ranks_split_each_global_batch_of_a_single_process_run():
    single = list(EpochBatchSampler(20, 4, seed=1))
    rank0 = list(EpochBatchSampler(20, 2, seed=1, rank=0, world_size=2))
    rank1 = list(EpochBatchSampler(20, 2, seed=1, rank=1, world_size=2))
    assert len(single) == len(rank0) == len(rank1) == 5
    for s, r0, r1 in zip(single, rank0, rank1):
        assert s == r0 + r1  # same samples, same per-sample seeds


def test_workers_give_the_same_batches_as_the_main_process():
    a = take(TrainStream(dataset(), 3, seed=2, num_workers=0), 4)
    b = take(TrainStream(dataset(), 3, seed=2, num_workers=2), 4)
    for x, y in zip(a, b):
        assert x["name"] == y["name"] and torch.equal(x["image"], y["image"])


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_a_dataset_smaller_than_a_batch_is_repeated_with_other_augmentations():
    sampler = EpochBatchSampler(3, 8, seed=4)  # 3 images, batch 8: 3 permutations back to back, one batch
    assert sampler.repeats == 3 and len(sampler) == 1
    (batch,) = list(sampler)
    indices = [i for i, _ in batch]
    assert sorted(indices[:3]) == sorted(indices[3:6]) == [0, 1, 2]  # every image before any twice
    assert len({seed for _, seed in batch}) == 8  # each copy has its own augmentation seed
    stream = TrainStream(dataset(3), 8, seed=4)
    first, second = take(stream, 2)
    assert len(first["name"]) == 8 and stream.state_dict() == {"epoch": 1, "batch": 1}
    copies = [k for k, n in enumerate(first["name"]) if n == first["name"][0]]
    assert len(copies) >= 2 and not torch.equal(first["image"][copies[0]], first["image"][copies[1]])
    # a dataset of one batch or more keeps its single permutation per epoch
    assert EpochBatchSampler(20, 4, seed=1).repeats == 1 and len(EpochBatchSampler(20, 4, seed=1)) == 5
    assert len(EpochBatchSampler(8, 2, seed=0, world_size=8)) == 1  # 8 images over 8 processes x 2: repeated once


def test_an_item_is_drawn_under_its_seed_in_every_generator_and_the_callers_are_untouched():
    import random

    import numpy as np

    from semiseg.engine.sampling import SeededDataset

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.rand(3), random.random(), float(np.random.rand())

    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = Draws()[0]
    torch.manual_seed(7)
    before = torch.rand(2)
    torch.manual_seed(7)
    got = SeededDataset(Draws())[(0, 123)]
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    assert torch.equal(torch.rand(2), before)  # the caller's stream goes on as if nothing was drawn
