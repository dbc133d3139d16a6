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


# CamVid's training frames: three video sequences of 62, 101 and 204 frames
SEQUENCES = [f"0001TP_{i:06d}" for i in range(62)] + [f"0006R0_f{i:05d}" for i in range(101)] + \
    [f"0016E5_{i:05d}" for i in range(204)]


def test_a_stratified_split_labels_every_group_in_proportion(tmp_path):
    from semiseg.data.splits import allocate

    # a plain draw of 12 can miss a sequence: seed 2 of the CamVid study had no 0001TP frame
    plain = make_split(SEQUENCES, count=12, seed=2)
    assert not any(n.startswith("0001TP") for n in plain.labeled)
    for seed in range(5):
        split = make_split(SEQUENCES, count=12, seed=seed, stratify="_")
        counts = {g: sum(n.startswith(g) for n in split.labeled) for g in ("0001TP", "0006R0", "0016E5")}
        assert counts == {"0001TP": 2, "0006R0": 3, "0016E5": 7}  # shares 2.03, 3.30, 6.67 of 12
        assert len(split.labeled) == 12 and set(split.labeled) | set(split.unlabeled) == set(SEQUENCES)
        assert set(split.labeled).isdisjoint(split.unlabeled)
    a, b = (make_split(SEQUENCES, count=12, seed=s, stratify="_").labeled for s in (1, 2))
    assert a != b and a == make_split(list(reversed(SEQUENCES)), count=12, seed=1, stratify="_").labeled
    # every group gets one before any gets a second; never more than a group has; fewer labels than groups
    assert allocate({"a": 1, "b": 1000}, 3) == {"a": 1, "b": 2}
    assert allocate({"a": 2, "b": 2}, 4) == {"a": 2, "b": 2}
    assert sum(allocate({"a": 5, "b": 50, "c": 500}, 2).values()) == 2
    # the split file says how it was drawn; a stratified id list is refused with the fix
    path = make_split(SEQUENCES, count=12, seed=0, stratify="_").save(tmp_path / "split.txt")
    assert "# stratify: '_': 0001TP 2/62, 0006R0 3/101, 0016E5 7/204" in open(path).read()
    with pytest.raises(DataError, match="drop stratify"):
        make_split(SEQUENCES, id_file=path, stratify="_")
    # a separator no name contains would make every name a group and the draw not random: refused, with the fix
    with pytest.raises(DataError, match="(?s)stratify='-': no sample name contains it .*CamVid: '_'"):
        make_split(SEQUENCES, count=12, seed=0, stratify="-")


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


def test_the_config_key_data_labeled_stratify_reaches_the_split():
    from semiseg.config import load_config
    from semiseg.engine.build import make_or_load_split

    cfg = load_config(None, ["data.kind=synthetic", "data.labeled.count=12", "data.labeled.seed=2",
                             "data.labeled.stratify=_"])
    split = make_or_load_split(cfg, SEQUENCES, None)
    assert split.labeled == make_split(SEQUENCES, count=12, seed=2, stratify="_").labeled
    assert sum(n.startswith("0001TP") for n in split.labeled) == 2


@pytest.mark.parametrize("name,count,seed,stratify", [("train_12_s1", 12, 1, None), ("train_12_s2", 12, 2, None),
                                                      ("train_46_s1", 46, 1, None), ("train_46_s2", 46, 2, None),
                                                      ("train_12_strat_s1", 12, 1, "_"),
                                                      ("train_12_strat_s2", 12, 2, "_")])
def test_the_committed_camvid_splits_are_the_draws_the_studies_make(name, count, seed, stratify):
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "camvid", "splits", f"{name}.txt")
    saved = Split.load(path)
    names = saved.labeled + saved.unlabeled  # every training frame of CamVid (367): the file lists them all
    assert len(names) == 367
    drawn = make_split(names, count=count, seed=seed, stratify=stratify)
    assert drawn.labeled == saved.labeled and drawn.unlabeled == saved.unlabeled
