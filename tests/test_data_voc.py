"""PASCAL VOC parsing on tiny trees built here, and the VOC colormap <-> index conversion."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from semiseg.data import DataError, build_dataset
from semiseg.data.palettes import VOC_PALETTE, colors_to_index, index_to_colors, voc_colormap


def test_voc_colormap_known_entries():
    cmap = voc_colormap(256)
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[0]) == (0, 0, 0)
    assert tuple(cmap[1]) == (128, 0, 0)  # aeroplane
    assert tuple(cmap[2]) == (0, 128, 0)  # bicycle
    assert tuple(cmap[15]) == (192, 128, 128)  # person
    assert tuple(cmap[20]) == (0, 64, 128)  # tvmonitor
    assert tuple(cmap[255]) == (224, 224, 192)  # the void border colour
    assert len({tuple(c) for c in cmap}) == 256  # all distinct, so the lookup is invertible


def test_colors_index_round_trip_is_exact():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 21, size=(37, 53)).astype(np.uint8)
    mask[:3] = 255
    rgb = index_to_colors(mask, VOC_PALETTE, ignore_color=(224, 224, 192))
    assert rgb.shape == (37, 53, 3)
    back = colors_to_index(rgb, VOC_PALETTE, ignore_colors=((224, 224, 192),))
    np.testing.assert_array_equal(back, mask)


def test_unknown_colour_names_file_and_colour():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(DataError) as e:
        colors_to_index(rgb, VOC_PALETTE, path="x/mask.png")
    msg = str(e.value)
    assert "x/mask.png" in msg and "(1, 2, 3)" in msg and "palette" in msg


def _make_voc(root, ids, *, aug=False, rgb_masks=False, deeplab_list=False):
    """VOCdevkit/VOC2012 with JPEG images and palette-PNG masks whose values are known."""
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    masks = {}
    for k, name in enumerate(ids):
        h, w = 20 + k, 30
        Image.fromarray(np.full((h, w, 3), 40 * k, dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[5:15, 5:20] = k + 1
        mask[4, 4:21] = 255  # void border as VOC draws it
        masks[name] = mask
        if rgb_masks:
            Image.fromarray(index_to_colors(mask, VOC_PALETTE, ignore_color=(224, 224, 192))).save(
                base / "SegmentationClass" / f"{name}.png")
        else:
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_colormap(256).flatten().tolist())
            png.save(base / "SegmentationClass" / f"{name}.png")
        if aug:
            (base / "SegmentationClassAug").mkdir(exist_ok=True)
            Image.fromarray(mask, mode="L").save(base / "SegmentationClassAug" / f"{name}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:-1]) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text(ids[-1] + "\n")
    if aug:
        (base / "ImageSets/SegmentationAug").mkdir(parents=True)
        lines = [f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" if deeplab_list else n for n in ids]
        (base / "ImageSets/SegmentationAug/train_aug.txt").write_text("\n".join(lines) + "\n")
    return base, masks


IDS = ["2007_000032", "2007_000039", "2008_000123"]


@pytest.mark.parametrize("root_level", ["parent", "devkit", "voc2012"])
def test_voc_reads_palette_masks_as_indices(tmp_path, root_level):
    base, masks = _make_voc(tmp_path, IDS)
    root = {"parent": tmp_path, "devkit": tmp_path / "VOCdevkit", "voc2012": base}[root_level]
    ds = build_dataset("voc", root, "train")
    assert ds.names == IDS[:2]  # ids stay strings, not numbers
    assert ds.num_classes == 21 and ds.classes[0] == "background" and ds.classes[-1] == "tvmonitor"
    assert ds.ignore_index == 255 and ds.palette.shape == (21, 3)
    sample = ds[1]
    assert set(sample) == {"image", "mask", "name"}
    assert isinstance(sample["image"], tv_tensors.Image) and sample["image"].dtype == torch.uint8
    assert isinstance(sample["mask"], tv_tensors.Mask) and sample["mask"].dtype == torch.int64
    assert sample["image"].shape == (3, 21, 30)
    np.testing.assert_array_equal(sample["mask"].numpy(), masks[IDS[1]])
    assert sample["name"] == IDS[1]
    assert build_dataset("voc", root, "val").names == [IDS[2]]


def test_voc_rgb_colour_masks_go_through_the_colormap(tmp_path):
    _, masks = _make_voc(tmp_path, IDS, rgb_masks=True)
    ds = build_dataset("voc", tmp_path, "train")
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), masks[IDS[0]])
    assert set(np.unique(ds[0]["mask"].numpy())) == {0, 1, 255}


def test_voc_aug_reads_train_aug_list_and_aug_masks(tmp_path):
    base, masks = _make_voc(tmp_path, IDS, aug=True, deeplab_list=True)
    # Make the Aug masks differ from SegmentationClass so we know which folder was read.
    aug_mask = masks[IDS[2]].copy()
    aug_mask[0, 0] = 7
    Image.fromarray(aug_mask, mode="L").save(base / "SegmentationClassAug" / f"{IDS[2]}.png")
    ds = build_dataset("voc_aug", tmp_path, "train")
    assert ds.names == IDS  # train_aug (all three), not train.txt (two)
    np.testing.assert_array_equal(ds[2]["mask"].numpy(), aug_mask)
    assert build_dataset("voc", tmp_path, "train").names == IDS[:2]


def test_voc_missing_mask_and_image_are_named(tmp_path):
    base, _ = _make_voc(tmp_path, IDS)
    (base / "SegmentationClass" / f"{IDS[0]}.png").unlink()
    (base / "JPEGImages" / f"{IDS[1]}.jpg").unlink()
    with pytest.raises(DataError) as e:
        build_dataset("voc", tmp_path, "train")
    msg = str(e.value)
    assert "2 problem(s)" in msg
    assert f"SegmentationClass/{IDS[0]}.png" in msg and "image has no mask" in msg
    assert f"JPEGImages/{IDS[1]}.jpg" in msg and "does not exist" in msg
    ds = build_dataset("voc", tmp_path, "train", strict=False)  # the checker's mode: keep going
    assert len(ds) == 0 and len(ds.problems) == 2


def test_voc_unknown_split_and_bad_root(tmp_path):
    _make_voc(tmp_path, IDS)
    with pytest.raises(DataError, match="no list for split 'test'"):
        build_dataset("voc", tmp_path, "test")
    with pytest.raises(DataError, match="VOC2012"):
        build_dataset("voc", tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="SegmentationClassAug"):
        build_dataset("voc_aug", tmp_path, "train")


def test_voc_empty_split_list_is_an_error(tmp_path):
    base, _ = _make_voc(tmp_path, IDS)
    (base / "ImageSets/Segmentation/val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"(?s)val\.txt.*the split list is empty"):
        build_dataset("voc", tmp_path, "val")
