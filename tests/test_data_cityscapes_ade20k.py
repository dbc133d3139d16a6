"""Cityscapes and ADE20K read as downloaded (stored values -> classes while reading), the label_map option of folder
datasets and its inverse for predictions, on tiny trees built here."""

import numpy as np
import pytest
from PIL import Image

from semiseg.cli import main
from semiseg.data import DataError, build_dataset
from semiseg.data.label_map import label_lut
from semiseg.data.palettes import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_IDS

# label id -> train id for the ids the masks below use (cityscapesScripts' labels.py): 0 unlabeled and 9 parking and
# 29 caravan are not evaluated
EXPECTED = {0: 255, 7: 0, 8: 1, 9: 255, 11: 2, 21: 8, 24: 11, 26: 13, 29: 255, 33: 18}


def _make_cityscapes(root, cities=(("train", "aachen"), ("train", "bochum"), ("val", "frankfurt")), *, train_ids=False):
    """ROOT/{leftImg8bit,gtFine}/SPLIT/CITY with two 8x12 frames per city; returns {name: label-id mask}."""
    rng = np.random.default_rng(0)
    masks = {}
    for split, city in cities:
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / split / city).mkdir(parents=True, exist_ok=True)
        for frame in range(2):
            name = f"{city}_000000_{frame:06d}"
            Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(
                root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            mask = rng.choice(list(EXPECTED), size=(8, 12)).astype(np.uint8)
            Image.fromarray(mask).save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
            if train_ids:
                Image.fromarray(np.vectorize(EXPECTED.get)(mask).astype(np.uint8)).save(
                    root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png")
            masks[name] = mask
    return masks


def test_label_ids_become_train_ids_while_reading(tmp_path):
    masks = _make_cityscapes(tmp_path / "cityscapes")
    train = build_dataset("cityscapes", tmp_path, "train")  # a folder holding cityscapes/ works too
    assert train.names == ["aachen_000000_000000", "aachen_000000_000001", "bochum_000000_000000",
                           "bochum_000000_000001"]  # CITY_SEQ_FRAME: --group-by _ scores per city
    assert train.classes == CITYSCAPES_CLASSES and train.num_classes == 19 and train.ignore_index == 255
    for index, name in enumerate(train.names):
        _, mask = train.read(index)
        np.testing.assert_array_equal(mask, np.vectorize(EXPECTED.get)(masks[name]))
    sample = build_dataset("cityscapes", tmp_path / "cityscapes", "val")[1]
    assert sample["name"] == "frankfurt_000000_000001" and tuple(sample["mask"].shape) == (8, 12)


def test_the_lookup_table_is_cityscapes_own():
    lut = label_lut("cityscapes", 19)
    assert [int(lut[i]) for i in CITYSCAPES_LABEL_IDS] == list(range(19))
    ignored = set(range(34)) - set(CITYSCAPES_LABEL_IDS)
    assert ignored == {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}
    assert all(lut[i] == 255 for i in ignored) and lut[255] == 255
    assert lut[40] == 40  # not a label id: kept as stored, so the value check names the file


def test_train_id_masks_read_unmapped(tmp_path):
    _make_cityscapes(tmp_path, train_ids=True)
    by_ids = build_dataset("cityscapes", tmp_path, "train")
    by_train_ids = build_dataset("cityscapes", tmp_path, "train", masks="labelTrainIds")
    assert by_train_ids.label_lut is None
    assert by_train_ids.mask_paths[0].endswith("_gtFine_labelTrainIds.png")
    for index in range(len(by_ids)):
        np.testing.assert_array_equal(by_ids.read(index)[1], by_train_ids.read(index)[1])


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="leftImg8bit"):
        build_dataset("cityscapes", tmp_path, "train")
    _make_cityscapes(tmp_path)
    with pytest.raises(DataError, match="not public") as e:
        build_dataset("cityscapes", tmp_path, "test")
    assert "semiseg predict" in str(e.value)
    with pytest.raises(DataError, match="unknown Cityscapes split"):
        build_dataset("cityscapes", tmp_path, "train_extra")
    with pytest.raises(DataError, match="labelTrainIds") as e:  # no such files yet
        build_dataset("cityscapes", tmp_path, "train", masks="labelTrainIds")
    assert "createTrainIdLabelImgs" in str(e.value) and "aachen_000000_000000_gtFine_labelTrainIds.png" in str(e.value)
    (tmp_path / "gtFine" / "train" / "bochum" / "bochum_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="1 problem") as e:
        build_dataset("cityscapes", tmp_path, "train")
    assert "bochum_000000_000001_gtFine_labelIds.png" in str(e.value) and "gtFine_trainvaltest.zip" in str(e.value)
    bad = np.full((8, 12), 40, dtype=np.uint8)  # not a Cityscapes label id
    Image.fromarray(bad).save(tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000000_gtFine_labelIds.png")
    with pytest.raises(DataError, match="frankfurt_000000_000000_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, "val")[0]


def test_data_check_guesses_cityscapes(tmp_path, capsys):
    _make_cityscapes(tmp_path)
    assert main(["data", "check", str(tmp_path), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "dataset: cityscapes" in out and "classes: 19" in out and "problems: none" in out
    assert "13 car" in out


def _make_folder(root, stored):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(stored).save(root / "masks" / "a.png")


def test_folder_label_map_and_its_errors(tmp_path, capsys):
    stored = np.array([[0, 1, 2, 150, 255, 7]] * 4, dtype=np.uint8)  # ADE20K-style: 0 = "other", classes from 1
    _make_folder(tmp_path / "ade", stored)
    ade = build_dataset("folder", tmp_path / "ade", classes=150, label_map="reduce_zero_label")
    np.testing.assert_array_equal(ade.read(0)[1], np.array([[255, 0, 1, 149, 255, 6]] * 4))
    own = build_dataset("folder", tmp_path / "ade", classes=3, label_map={0: 255, 1: 0, 2: 1, 150: 2, "7": 255})
    np.testing.assert_array_equal(own.read(0)[1], np.array([[255, 0, 1, 2, 255, 255]] * 4))
    with pytest.raises(DataError, match="neither a class"):  # 3 classes: index 5 does not exist
        build_dataset("folder", tmp_path / "ade", classes=3, label_map={150: 5})
    with pytest.raises(DataError, match="unknown label_map preset"):
        build_dataset("folder", tmp_path / "ade", classes=3, label_map="ade")
    with pytest.raises(DataError, match="binary"):
        build_dataset("folder", tmp_path / "ade", classes=2, binary=True, label_map={1: 0})
    with pytest.raises(DataError, match="masks store 0..255"):
        build_dataset("folder", tmp_path / "ade", classes=3, label_map={300: 1})
    partial = build_dataset("folder", tmp_path / "ade", classes=3, label_map={0: 255, 1: 0})  # 150 is kept: an error
    with pytest.raises(DataError, match="a.png"):
        partial.read(0)
    # the same through the command line
    assert main(["data", "check", str(tmp_path / "ade"), "--classes", "3", "--label-map", "0:255,1:0,2:1,150:2,7:255"]) == 0
    assert "problems: none" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "ade"), "--classes", "150", "--label-map", "reduce_zero_label"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "ade"), "--classes", "3", "--label-map", "{0: 255, 1: 0}"]) == 1
    assert "a.png" in capsys.readouterr().out


def test_the_unimatch_recipe_trains_on_cityscapes_with_ohem(tmp_path, capsys):
    """The shipped Cityscapes recipe end to end (a small model and crop): the kind, the label ids, OHEM, a split."""
    _make_cityscapes(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--no-progress", "--config", "cityscapes/unimatch_deeplabv3plus_resnet50_1-8",
                 "--run-dir", str(run), f"data.root={tmp_path / 'data'}", "model.name=deeplabv3plus_mobilenetv2",
                 "model.pretrained_backbone=false", "model.options.output_stride=16", "model.options.multi_grid=null",
                 "data.crop_size=[16,16]",
                 "eval.crop_size=[16,16]", "data.batch_size=2", "data.labeled.fraction=0.5", "data.num_workers=0",
                 "loss.ohem_min_kept=50", "train.iterations=2", "train.eval_interval=0", "train.threads=1"]) == 0
    assert "traffic light" in capsys.readouterr().out  # the per-class table has Cityscapes' classes
    split = (run / "split.txt").read_text()
    assert "aachen_000000_000000" in split and "# labeled: 2" in split
    assert (run / "last.pt").is_file()
    # predictions of the val images as class indices, and as label ids for the evaluation server
    images = tmp_path / "data" / "leftImg8bit" / "val" / "frankfurt"
    assert main(["predict", str(run), str(images), str(tmp_path / "classes"), "--threads", "1"]) == 0
    assert main(["predict", str(run), str(images), str(tmp_path / "ids"), "--threads", "1",
                 "--stored-values", "cityscapes"]) == 0
    for name in ("frankfurt_000000_000000_leftImg8bit.png", "frankfurt_000000_000001_leftImg8bit.png"):
        classes, ids = Image.open(tmp_path / "classes" / name), Image.open(tmp_path / "ids" / name)
        assert classes.mode == "P" and ids.mode == "L"
        np.testing.assert_array_equal(np.array(ids), np.array(CITYSCAPES_LABEL_IDS)[np.array(classes)])


def test_stored_values_invert_the_label_map():
    from semiseg.data.label_map import stored_values_lut

    to_ids = stored_values_lut("cityscapes", 19)
    assert [int(to_ids[k]) for k in range(19)] == CITYSCAPES_LABEL_IDS
    assert [int(v) for v in stored_values_lut("reduce_zero_label", 150)[:3]] == [1, 2, 3]
    assert int(stored_values_lut({0: 255, 5: 1}, 3)[1]) == 5 and int(stored_values_lut({0: 255, 5: 1}, 3)[2]) == 2
    with pytest.raises(DataError, match="no inverse"):
        stored_values_lut({3: 1, 4: 1}, 3)


def test_unimatch_split_lists_select_the_same_frames(tmp_path):
    """UniMatch's splits/cityscapes/*/labeled.txt name image and mask files; as an id file they select the frames."""
    from semiseg.data.splits import make_split, read_names

    _make_cityscapes(tmp_path)
    ids = tmp_path / "labeled.txt"
    ids.write_text("leftImg8bit/train/bochum/bochum_000000_000001_leftImg8bit.png "
                   "gtFine/train/bochum/bochum_000000_000001_gtFine_labelTrainIds.png\n"
                   "leftImg8bit/train/aachen/aachen_000000_000000_leftImg8bit.png "
                   "gtFine/train/aachen/aachen_000000_000000_gtFine_labelTrainIds.png\n")
    assert read_names(ids) == ["bochum_000000_000001", "aachen_000000_000000"]
    split = make_split(build_dataset("cityscapes", tmp_path, "train").names, id_file=ids)
    assert sorted(split.labeled) == ["aachen_000000_000000", "bochum_000000_000001"]
    assert sorted(split.unlabeled) == ["aachen_000000_000001", "bochum_000000_000000"]


def test_ade20k_as_downloaded(tmp_path, capsys):
    """ADEChallengeData2016: images/ and annotations/ per split, stored 0 = other (ignored), k = class k - 1."""
    from semiseg.data.palettes import ADE20K_CLASSES

    root = tmp_path / "ADEChallengeData2016"
    stored = np.array([[0, 1, 2, 150]] * 3, dtype=np.uint8)
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in (1, 2):
            Image.fromarray(np.zeros((3, 4, 3), dtype=np.uint8)).save(root / "images" / split / f"{prefix}_{i:08d}.jpg")
            Image.fromarray(stored).save(root / "annotations" / split / f"{prefix}_{i:08d}.png")
    val = build_dataset("ade20k", tmp_path, "val")  # the folder holding ADEChallengeData2016 works too
    assert val.names == ["ADE_val_00000001", "ADE_val_00000002"] and val.classes == ADE20K_CLASSES
    np.testing.assert_array_equal(val.read(0)[1], np.array([[255, 0, 1, 149]] * 3))
    assert build_dataset("ade20k", root, "training").names == ["ADE_train_00000001", "ADE_train_00000002"]
    with pytest.raises(DataError, match="unknown ADE20K split"):
        build_dataset("ade20k", root, "test")
    with pytest.raises(DataError, match="ADEChallengeData2016"):
        build_dataset("ade20k", tmp_path / "nowhere", "train")
    assert main(["data", "check", str(root), "--split", "val"]) == 0  # the kind is guessed
    out = capsys.readouterr().out
    assert "dataset: ade20k" in out and "classes: 150" in out and "problems: none" in out
