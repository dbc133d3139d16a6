"""SBD .mat masks + VOC 2012 -> the voc_aug layout (SegmentationClassAug, train_aug.txt), on tiny trees built here."""

import numpy as np
import pytest
from PIL import Image

from semiseg.cli import main
from semiseg.data import DataError, build_dataset
from semiseg.data.palettes import voc_colormap
from semiseg.data.sbd import convert_sbd, read_sbd_mask

scipy_io = pytest.importorskip("scipy.io")
scipy_sparse = pytest.importorskip("scipy.sparse")

SIZE = (12, 16)


def _sbd_mat(path, mask):
    """A file shaped like SBD's cls/*.mat: struct GTcls with Boundaries (cell of sparse), Segmentation, CategoriesPresent."""
    boundaries = np.empty((21, 1), dtype=object)
    for k in range(21):
        boundaries[k, 0] = scipy_sparse.csc_matrix(mask == k, dtype=float)
    present = np.unique(mask[mask > 0]).astype(np.uint8).reshape(-1, 1)
    scipy_io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": mask, "CategoriesPresent": present}})


def _voc_mask(k):
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[2:8, 3:10] = k
    mask[1, 2:11] = 255  # VOC's void border
    return mask


def _sbd_mask(k):
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[4:11, 6:15] = k  # SBD has no void border, and other outlines than VOC
    return mask


def _make_trees(root, *, voc_train=("a", "b"), voc_val=("c",), sbd_train=("b", "d"), sbd_val=("c", "e")):
    """VOC2012 with palette masks for its train/val, SBD with .mat masks; every image in JPEGImages."""
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    names = sorted(set(voc_train) | set(voc_val) | set(sbd_train) | set(sbd_val))
    for k, name in enumerate(names, start=1):
        Image.fromarray(np.full((*SIZE, 3), 20 * k, dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        if name in voc_train or name in voc_val:
            png = Image.fromarray(_voc_mask(k), mode="P")
            png.putpalette(voc_colormap(256).flatten().tolist())
            png.save(voc / "SegmentationClass" / f"{name}.png")
        if name in sbd_train or name in sbd_val:
            _sbd_mat(sbd / "cls" / f"{name}.mat", _sbd_mask(k))
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(voc_train) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(voc_val) + "\n")
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    return voc, sbd, {name: k for k, name in enumerate(names, start=1)}


def test_read_sbd_mask_returns_the_segmentation_field(tmp_path):
    mask = _sbd_mask(7)
    _sbd_mat(tmp_path / "x.mat", mask)
    out = read_sbd_mask(str(tmp_path / "x.mat"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)
    _sbd_mat(tmp_path / "double.mat", mask.astype(np.float64))  # stored as MATLAB double
    np.testing.assert_array_equal(read_sbd_mask(str(tmp_path / "double.mat")), mask)


def test_read_sbd_mask_errors_name_the_file(tmp_path):
    (tmp_path / "junk.mat").write_bytes(b"not a matlab file at all")
    with pytest.raises(DataError, match="junk.mat.*cannot read the SBD mask"):
        read_sbd_mask(str(tmp_path / "junk.mat"))
    scipy_io.savemat(tmp_path / "inst.mat", {"GTinst": {"Segmentation": _sbd_mask(1)}})
    scipy_io.savemat(tmp_path / "wide.mat", {"GTcls": {"Segmentation": np.full((3, 3), 300.0)}})
    with pytest.raises(DataError, match="wide.mat.*values from 300"):  # not silently wrapped to 44 by uint8
        read_sbd_mask(str(tmp_path / "wide.mat"))
    with pytest.raises(DataError, match="inst.mat.*GTcls") as e:
        read_sbd_mask(str(tmp_path / "inst.mat"))
    assert "dataset/cls/" in str(e.value)


def test_convert_writes_voc_aug_layout_with_voc_masks_winning(tmp_path):
    voc, sbd, index = _make_trees(tmp_path)
    report = convert_sbd(str(tmp_path / "benchmark_RELEASE"), str(tmp_path / "VOCdevkit"), progress=False)

    # (VOC train + SBD train + SBD val) - VOC val: "c" is VOC val, so it stays out although SBD has it
    assert (voc / "ImageSets/SegmentationAug/train_aug.txt").read_text().split() == ["a", "b", "d", "e"]
    assert (report.from_sbd, report.from_voc, report.train_aug) == (2, 3, 4)
    aug = voc / "SegmentationClassAug"
    assert sorted(p.name for p in aug.iterdir()) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    for name in "abc":  # VOC's own annotation, read from the palette PNG as indices, 255 border kept
        np.testing.assert_array_equal(np.array(Image.open(aug / f"{name}.png")), _voc_mask(index[name]))
    for name in "de":
        np.testing.assert_array_equal(np.array(Image.open(aug / f"{name}.png")), _sbd_mask(index[name]))
    assert not list(voc.glob(".SegmentationClassAug*"))  # no temporary folder left behind

    dataset = build_dataset("voc_aug", str(tmp_path / "VOCdevkit"), "train")
    assert list(dataset.names) == ["a", "b", "d", "e"]
    _, mask = dataset.read(list(dataset.names).index("d"))
    np.testing.assert_array_equal(mask, _sbd_mask(index["d"]))


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    voc, _, index = _make_trees(tmp_path)
    aug = voc / "SegmentationClassAug"
    aug.mkdir()
    Image.fromarray(np.full(SIZE, 3, dtype=np.uint8)).save(aug / "mine.png")
    with pytest.raises(DataError, match="SegmentationClassAug.*exists already") as e:
        convert_sbd(str(tmp_path / "benchmark_RELEASE"), str(voc), progress=False)
    assert "--overwrite" in str(e.value)
    assert [p.name for p in aug.iterdir()] == ["mine.png"]  # untouched

    convert_sbd(str(tmp_path / "benchmark_RELEASE"), str(voc), overwrite=True, progress=False)
    assert sorted(p.name for p in aug.iterdir()) == ["a.png", "b.png", "c.png", "d.png", "e.png"]

    for p in aug.iterdir():  # an empty mask folder, but the list file is there: that is the user's too
        p.unlink()
    with pytest.raises(DataError, match="train_aug.txt.*exists already"):
        convert_sbd(str(tmp_path / "benchmark_RELEASE"), str(voc), progress=False)


def test_bad_sbd_mask_stops_before_anything_is_written(tmp_path):
    voc, sbd, _ = _make_trees(tmp_path)
    bad = _sbd_mask(30)  # VOC has 21 classes
    _sbd_mat(sbd / "cls" / "e.mat", bad)
    with pytest.raises(DataError, match=r"e\.mat.*values 30") as e:
        convert_sbd(str(sbd), str(voc), progress=False)
    assert "21 classes" in str(e.value)
    assert not (voc / "SegmentationClassAug").exists()
    assert not list(voc.glob(".SegmentationClassAug*"))
    assert not (voc / "ImageSets/SegmentationAug/train_aug.txt").exists()


def test_missing_inputs_are_named(tmp_path):
    voc, sbd, _ = _make_trees(tmp_path)
    (voc / "JPEGImages" / "e.jpg").unlink()
    with pytest.raises(DataError, match=r"JPEGImages.*e\.jpg"):
        convert_sbd(str(sbd), str(voc), progress=False)
    with pytest.raises(DataError, match="no SBD folder"):
        convert_sbd(str(tmp_path / "nowhere"), str(voc), progress=False)


def test_cli_sbd(tmp_path, capsys):
    voc, _, _ = _make_trees(tmp_path)
    assert main(["data", "sbd", str(tmp_path / "benchmark_RELEASE"), str(tmp_path / "VOCdevkit"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "5 masks (2 from SBD, 3 from VOC)" in out and "4 training images" in out
    assert main(["data", "sbd", str(tmp_path / "benchmark_RELEASE"), str(tmp_path / "VOCdevkit"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "--overwrite" in captured.out + captured.err
