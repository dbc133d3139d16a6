"""Folder datasets (images + masks matched by stem), the CamVid preset, and every bad-input error."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg.data import DataError, build_dataset
from semiseg.data.io import check_mask_values
from semiseg.data.palettes import CAMVID_PALETTE, index_to_colors


def _save_image(path, h=16, w=24, value=100, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path, format=fmt)


def _save_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(path)


def _stripes(h=16, w=24, k=3):
    return (np.arange(w)[None, :].repeat(h, 0) * k // w).astype(np.uint8)


def _make_folder(root, stems=("a", "b", "c"), exts=(".jpg", ".png", ".jpeg"), mask_dir="masks", k=3):
    for stem, ext in zip(stems, exts):
        _save_image(root / "images" / f"{stem}{ext}")
        _save_mask(root / mask_dir / f"{stem}.png", _stripes(k=k))
    return root


def test_folder_matches_by_stem_with_any_extension(tmp_path):
    _make_folder(tmp_path, exts=(".jpg", ".PNG", ".jpeg"))
    ds = build_dataset("folder", tmp_path, classes="sky,road,car")
    assert ds.names == ["a", "b", "c"]
    assert ds.classes == ["sky", "road", "car"] and ds.num_classes == 3 and ds.ignore_index == 255
    assert ds.palette.shape == (3, 3) and ds.palette.dtype == np.uint8
    s = ds[1]
    assert s["name"] == "b" and s["image"].shape == (3, 16, 24)
    np.testing.assert_array_equal(s["mask"].numpy(), _stripes())


def test_folder_split_subfolder_labels_dir_and_suffix(tmp_path):
    for split in ("train", "val"):
        _save_image(tmp_path / split / "imgs" / f"{split}1.png")
        _save_mask(tmp_path / split / "labels" / f"{split}1_mask.png", _stripes())
    _save_mask(tmp_path / "val" / "labels" / "stray_mask.png", _stripes())
    with pytest.raises(DataError, match=r"(?s)holds the splits train, val.*--split train"):
        build_dataset("folder", tmp_path, None, classes=3)
    ds = build_dataset("folder", tmp_path, "val", classes=3, mask_suffix="_mask")
    assert ds.names == ["val1"] and ds.classes == ["class0", "class1", "class2"]
    assert [str(w) for w in ds.warnings] and "stray_mask.png" in str(ds.warnings[0])  # mask without image


def test_classes_from_file_and_explicit_palette(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("# names\nbg\nfg\nother\n")
    ds = build_dataset("folder", tmp_path, classes=str(tmp_path / "classes.txt"), palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert ds.classes == ["bg", "fg", "other"]
    np.testing.assert_array_equal(ds.palette, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    with pytest.raises(DataError, match="palette has 2 colours for 3 classes"):
        build_dataset("folder", tmp_path, classes="a,b,c", palette=[[0, 0, 0], [1, 1, 1]])


def test_image_without_mask_names_file_and_fix(tmp_path):
    _make_folder(tmp_path)
    _save_image(tmp_path / "images" / "lonely.jpg")
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, classes=3)
    msg = str(e.value)
    assert "lonely.jpg" in msg and "image has no mask" in msg and "masks/lonely.png" in msg
    # As unlabeled data it is allowed, with every pixel ignored.
    ds = build_dataset("folder", tmp_path, classes=3, require_masks=False)
    i = ds.names.index("lonely")
    assert (ds[i]["mask"] == 255).all() and ds[i]["mask"].shape == (16, 24)


def test_out_of_range_values_are_listed(tmp_path):
    _make_folder(tmp_path, k=5)  # values 0..4 but only 3 classes
    ds = build_dataset("folder", tmp_path, classes="a,b,c")
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert "masks/a.png" in msg and "values 3, 4 outside 0..2" in msg and "--classes" in msg


def test_binary_0_255_masks(tmp_path):
    _save_image(tmp_path / "images" / "x.png")
    m = np.zeros((16, 24), dtype=np.uint8)
    m[4:10, 4:10] = 255
    _save_mask(tmp_path / "masks" / "x.png", m)
    # With a non-255 ignore index, 255 is out of range and the error suggests the binary option.
    with pytest.raises(DataError, match=r"(?s)values 255 outside.*binary mask stored as 0/255.*--binary"):
        build_dataset("folder", tmp_path, classes="bg,fg", ignore_index=254)[0]
    # With 255 as ignore the mask is valid, but a 2-class dataset warns that the object would be ignored.
    with pytest.warns(UserWarning, match=r"x\.png.*binary=True"):
        build_dataset("folder", tmp_path, classes="bg,fg")[0]
    ds = build_dataset("folder", tmp_path, classes="bg,fg", binary=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = ds[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, (m > 0).astype(np.int64))
    with pytest.raises(DataError, match="exactly 2 classes"):
        build_dataset("folder", tmp_path, classes="a,b,c", binary=True)


def test_read_mask_binary_threshold(tmp_path):
    from semiseg.data.io import read_mask

    _save_mask(tmp_path / "m.png", [[0, 100, 128, 255]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", binary=True), [[0, 0, 1, 1]])
    _save_mask(tmp_path / "m01.png", [[0, 1, 1, 0]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m01.png", binary=True), [[0, 1, 1, 0]])


def test_check_mask_values_suggestions():
    hist = check_mask_values(np.array([[0, 1, 255]], dtype=np.uint8), 2, 255, "ok.png")
    assert hist[0] == hist[1] == hist[255] == 1
    with pytest.raises(DataError, match="foreground/background dataset has 2 classes"):
        check_mask_values(np.array([[0, 1]], dtype=np.uint8), 1, 255, "one.png")


def test_rgb_mask_needs_a_palette(tmp_path):
    _save_image(tmp_path / "images" / "x.png")
    idx = _stripes(k=11)
    (tmp_path / "masks").mkdir()
    Image.fromarray(index_to_colors(idx, CAMVID_PALETTE)).save(tmp_path / "masks" / "x.png")
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, classes=11)[0]
    assert "masks/x.png" in str(e.value) and "RGB colour" in str(e.value) and "--palette" in str(e.value)
    # A palette (or a preset class list that has one) decodes it.
    np.testing.assert_array_equal(build_dataset("folder", tmp_path, classes=11, palette="camvid")[0]["mask"].numpy(), idx)
    np.testing.assert_array_equal(build_dataset("folder", tmp_path, classes="camvid")[0]["mask"].numpy(), idx)


def test_grey_mask_saved_as_rgb_is_read_as_indices(tmp_path):
    _save_image(tmp_path / "images" / "x.png")
    idx = _stripes()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.repeat(idx[..., None], 3, axis=2)).save(tmp_path / "masks" / "x.png")
    np.testing.assert_array_equal(build_dataset("folder", tmp_path, classes=3)[0]["mask"].numpy(), idx)


def test_size_mismatch_names_both_files(tmp_path):
    _save_image(tmp_path / "images" / "x.jpg", h=16, w=24)
    _save_mask(tmp_path / "masks" / "x.png", np.zeros((8, 12)))
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, classes=2)[0]
    msg = str(e.value)
    assert "masks/x.png" in msg and "images/x.jpg" in msg and "12x8" in msg and "24x16" in msg


def test_truncated_and_unreadable_files(tmp_path):
    _make_folder(tmp_path)
    jpg = tmp_path / "images" / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:600])
    (tmp_path / "images" / "b.png").write_text("not an image")
    ds = build_dataset("folder", tmp_path, classes=3)
    with pytest.raises(DataError, match=r"(?s)a\.jpg.*truncated or corrupt"):
        ds[0]
    with pytest.raises(DataError, match=r"(?s)b\.png.*not an image file"):
        ds[1]


def test_duplicate_stems_and_empty_folders(tmp_path):
    _make_folder(tmp_path)
    _save_image(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match=r"two images with the stem 'a'"):
        build_dataset("folder", tmp_path, classes=3)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_dataset("folder", empty, classes=3)
    with pytest.raises(DataError, match="no image folder found"):
        build_dataset("folder", tmp_path / "masks", classes=3)
    with pytest.raises(DataError, match="unknown dataset kind"):
        build_dataset("nope", tmp_path)
    with pytest.raises(DataError, match=r"(?s)unexpected keyword argument 'colour'.*kind 'folder'"):
        build_dataset("folder", tmp_path, classes=3, colour=1)


def test_camvid_preset(tmp_path):
    idx = _stripes(k=11)
    idx[0] = 255
    for split in ("train", "val"):
        _save_image(tmp_path / split / "images" / f"0001TP_{split}.jpg")
        _save_mask(tmp_path / split / "labels" / f"0001TP_{split}.png", idx)
    ds = build_dataset("camvid", tmp_path, "val")
    assert ds.names == ["0001TP_val"] and ds.num_classes == 11
    assert ds.classes[0] == "sky" and ds.classes[-1] == "bicyclist"
    np.testing.assert_array_equal(ds.palette, CAMVID_PALETTE)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), idx)
    # The split folder itself works as root too.
    assert build_dataset("camvid", tmp_path / "train", "train").names == ["0001TP_train"]
    with pytest.raises(DataError, match="unknown CamVid split"):
        build_dataset("camvid", tmp_path, "training")


def test_dataloader_batches_folder_samples(tmp_path):
    from semiseg.data.transforms import build_train_transform

    _make_folder(tmp_path)
    ds = build_dataset("folder", tmp_path, classes=3, transform=build_train_transform(12))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 12, 12) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 12, 12) and batch["mask"].dtype == torch.int64
    assert batch["name"] == ["a", "b", "c"]


def test_voc_colour_masks_in_a_folder(tmp_path):
    from semiseg.data.palettes import VOC_PALETTE

    _save_image(tmp_path / "images" / "x.png")
    idx = _stripes(k=21)
    idx[0] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(index_to_colors(idx, VOC_PALETTE, ignore_color=(224, 224, 192))).save(tmp_path / "masks" / "x.png")
    np.testing.assert_array_equal(build_dataset("folder", tmp_path, classes="voc")[0]["mask"].numpy(), idx)
