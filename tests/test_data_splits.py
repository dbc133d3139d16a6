"""Labeled/unlabeled splits (deterministic, nested, saved and reloaded) and the endless unlabeled loader."""

import pytest
import torch

from semiseg.data import DataError, InfiniteLoader
from semiseg.data.splits import Split, make_split, read_names

NAMES = [f"2007_{i:06d}" for i in range(100)]


def test_split_is_deterministic_and_independent_of_input_order():
    a = make_split(NAMES, fraction=0.125, seed=3)
    b = make_split(list(reversed(NAMES)), fraction=0.125, seed=3)
    assert a.labeled == b.labeled and a.unlabeled == b.unlabeled
    assert len(a.labeled) == 12 and len(a.unlabeled) == 88  # floor(0.125 * 100), as AdvSemiSeg
    assert set(a.labeled).isdisjoint(a.unlabeled) and set(a.labeled) | set(a.unlabeled) == set(NAMES)
    assert make_split(NAMES, fraction=0.125, seed=4).labeled != a.labeled
    assert a.labeled != sorted(a.labeled)  # shuffled, not the first names


def test_smaller_fractions_are_nested_in_larger_ones():
    eighth = make_split(NAMES, fraction=1 / 8, seed=0).labeled
    quarter = make_split(NAMES, fraction=1 / 4, seed=0).labeled
    half = make_split(NAMES, count=50, seed=0).labeled
    assert set(eighth) < set(quarter) < set(half)
    assert make_split(NAMES, fraction=1.0).unlabeled == []
    assert len(make_split(NAMES[:3], fraction=0.01).labeled) == 1  # at least one labeled sample


def test_save_load_round_trip_is_readable(tmp_path):
    split = make_split(NAMES, fraction=0.25, seed=7)
    path = split.save(tmp_path / "run" / "split.txt")
    text = (tmp_path / "run" / "split.txt").read_text()
    assert text.startswith("# semiseg split v1\n# seed: 7\n# labeled: 25\n# unlabeled: 75")
    assert "[labeled]\n" + split.labeled[0] + "\n" in text
    loaded = Split.load(path)
    assert loaded.labeled == split.labeled and loaded.unlabeled == split.unlabeled and loaded.seed == 7
    assert isinstance(loaded.labeled[0], str) and loaded.labeled[0].startswith("2007_")
    # A saved split is also a valid id file: its [labeled] section.
    again = make_split(NAMES, id_file=path, seed=99)
    assert again.labeled == split.labeled and set(again.unlabeled) == set(split.unlabeled)


def test_id_file_plain_and_deeplab_lines(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# labeled ids\n{NAMES[5]}\n\n/JPEGImages/{NAMES[9]}.jpg /SegmentationClassAug/{NAMES[9]}.png\n")
    split = make_split(NAMES, id_file=ids)
    assert split.labeled == [NAMES[5], NAMES[9]] and len(split.unlabeled) == 98
    assert read_names(ids) == [NAMES[5], NAMES[9]]


def test_split_errors_name_the_file_and_fix(tmp_path):
    with pytest.raises(DataError, match="empty dataset"):
        make_split([], fraction=0.5)
    with pytest.raises(DataError, match="exactly one of"):
        make_split(NAMES, fraction=0.5, count=3)
    with pytest.raises(DataError, match=r"fraction must be in \(0, 1\]"):
        make_split(NAMES, fraction=0)
    with pytest.raises(DataError, match="count must be in 1..100"):
        make_split(NAMES, count=101)
    bad = tmp_path / "bad.txt"
    bad.write_text("2007_000001\nnot_a_sample\n")
    with pytest.raises(DataError, match=r"(?s)bad\.txt.*1 names in the id list are not in the dataset.*not_a_sample"):
        make_split(NAMES, id_file=bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(DataError, match=r"empty\.txt.*id list is empty"):
        make_split(NAMES, id_file=empty)
    with pytest.raises(DataError, match="missing.txt"):
        make_split(NAMES, id_file=tmp_path / "missing.txt")
    with pytest.raises(DataError, match="not a saved semiseg split"):
        Split.load(bad)


def test_indices_map_names_to_dataset_positions():
    split = make_split(NAMES, count=10, seed=1)
    lab, unl = split.indices(NAMES)
    assert [NAMES[i] for i in lab] == split.labeled and sorted(lab + unl) == list(range(100))
    with pytest.raises(DataError, match="not in the dataset"):
        split.indices(NAMES[:50])


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_infinite_loader_cycles_and_sets_epochs():
    data = torch.arange(5)
    sampler = _EpochSampler(5)
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
    it = InfiniteLoader(loader)
    batches = [next(it).tolist() for _ in range(7)]  # 3 batches per epoch, so this crosses two epoch ends
    assert batches[:3] == [[0, 1], [2, 3], [4]] and batches[3:6] == batches[:3] and batches[6] == [0, 1]
    assert sampler.epochs == [0, 1, 2] and it.epoch == 2 and len(it) == 3


def test_infinite_loader_on_empty_loader_is_an_error():
    loader = torch.utils.data.DataLoader(torch.arange(3), batch_size=4, drop_last=True)
    with pytest.raises(DataError, match="no batches"):
        next(InfiniteLoader(loader))
