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
    with pytest.raises(DataError, match=r"(?s)holds the splits train, val.*split='train'"):
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
    assert "masks/a.png" in msg and "values 3, 4 outside 0..2" in msg and "check the class list (classes)" in msg


def test_binary_0_255_masks(tmp_path):
    _save_image(tmp_path / "images" / "x.png")
    m = np.zeros((16, 24), dtype=np.uint8)
    m[4:10, 4:10] = 255
    _save_mask(tmp_path / "masks" / "x.png", m)
    # With a non-255 ignore index, 255 is out of range and the error suggests the binary option.
    with pytest.raises(DataError, match=r"(?s)values 255 outside.*binary mask stored as 0/255.*binary=True"):
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
    assert "masks/x.png" in str(e.value) and "RGB colour" in str(e.value) and "palette='voc'" in str(e.value)
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
    with pytest.raises(DataError, match=r"(?s)kind 'folder' has no option 'colour'.*valid keys of options: classes"):
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


# ---------------------------------------------------------------------------------------------------
# issue 15 items 2, 3, 5 and issue 13 item 5: formats, folders, sizes, ignore regions, silent corruptions


def test_every_format_pil_reads_is_accepted_gif_and_tif_included(tmp_path):
    from semiseg.data.io import IMAGE_EXTENSIONS

    assert {".gif", ".tif", ".tiff", ".png", ".jpg", ".bmp", ".webp", ".pbm"} <= set(IMAGE_EXTENSIONS)
    _save_image(tmp_path / "images" / "21.tif")
    (tmp_path / "masks").mkdir()
    Image.fromarray(_stripes(k=2) * 255).convert("P").save(tmp_path / "masks" / "21.gif")
    ds = build_dataset("folder", tmp_path, classes="bg,vessel", binary=True)
    assert ds.names == ["21"] and ds.mask_paths[0].endswith("21.gif")
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), _stripes(k=2))


def test_a_mask_in_a_format_pil_cannot_read_is_named_with_the_reason(tmp_path):
    _save_image(tmp_path / "images" / "21.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "21.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, classes=2)
    msg = str(e.value)
    assert "masks/21.npy has its name, but .npy is not an image format PIL reads" in msg and ".gif" in msg
    assert "require_masks=False" in msg  # the Python spelling when built from Python


def test_require_masks_fix_is_spelled_as_the_user_typed_it(tmp_path, capsys):
    from semiseg.cli import main
    from semiseg.data.errors import option_style

    _make_folder(tmp_path)
    _save_image(tmp_path / "images" / "lonely.jpg")
    with option_style("config", options="data.options"), pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, classes=3)
    assert "data.options.require_masks=false" in str(e.value)
    assert main(["data", "check", str(tmp_path), "--classes", "3"]) == 1
    out = capsys.readouterr().out
    assert "set --allow-unlabeled to use it" in out and "require_masks=" not in out


def test_two_candidate_mask_folders_are_an_error_that_lists_them(tmp_path):
    # the retina layout: label masks in 1st_manual/, field-of-view masks in mask/
    for stem in ("21", "22"):
        _save_image(tmp_path / "images" / f"{stem}.tif")
        _save_mask(tmp_path / "1st_manual" / f"{stem}.gif", _stripes(k=2))
        _save_mask(tmp_path / "mask" / f"{stem}.gif", np.full((16, 24), 255))
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, classes="bg,vessel", binary=True)
    msg = str(e.value)
    assert "several folders besides images/ could hold the masks" in msg
    assert "1st_manual/ (2 image files, e.g. 21.gif)" in msg and "mask/ (2 image files" in msg
    assert "mask_dir='mask'" in msg and "roi_dir" in msg
    ds = build_dataset("folder", tmp_path, classes="bg,vessel", binary=True, mask_dir="1st_manual", roi_dir="mask")
    assert len(ds) == 2
    # one unknown folder is not taken on trust either
    only = tmp_path / "other"
    _save_image(only / "images" / "a.png")
    _save_mask(only / "gt_final" / "a.png", _stripes())
    with pytest.raises(DataError, match=r"(?s)no mask folder found.*gt_final/.*mask_dir='gt_final'"):
        build_dataset("folder", only, classes=3)


def test_masks_named_with_a_suffix_or_another_pattern(tmp_path):
    for stem in ("21_training", "22_training"):
        _save_image(tmp_path / "a" / "images" / f"{stem}.tif")
        _save_mask(tmp_path / "a" / "masks" / f"{stem}_mask.png", _stripes())
    with pytest.raises(DataError, match=r"(?s)no image has a mask of the same name.*mask_suffix='_mask'"):
        build_dataset("folder", tmp_path / "a", classes=3)
    assert len(build_dataset("folder", tmp_path / "a", classes=3, mask_suffix="_mask")) == 2
    for stem, mask in (("21_training", "21_manual1"), ("22_training", "22_manual1")):
        _save_image(tmp_path / "b" / "images" / f"{stem}.tif")
        _save_mask(tmp_path / "b" / "masks" / f"{mask}.png", _stripes())
    # the retina set's names: 21_training.tif, 21_manual1.gif, 21_training_mask.gif
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path / "b", classes=3)
    msg = str(e.value)
    assert "2 images (21_training.tif" in msg and "2 masks (21_manual1.png" in msg
    assert "image_suffix='_training' and mask_suffix='_manual1'" in msg and "pair as 21, 22" in msg
    assert "mask has no image" not in msg  # one problem for the folder, not one per file
    for stem in ("21", "22"):
        _save_mask(tmp_path / "b" / "fov" / f"{stem}_training_mask.png", np.full((16, 24), 255))
    with pytest.raises(DataError, match=r"(?s)no image has a region mask of the same name.*roi_suffix='_training_mask'"):
        build_dataset("folder", tmp_path / "b", classes=3, image_suffix="_training", mask_suffix="_manual1",
                      roi_dir="fov")
    ds = build_dataset("folder", tmp_path / "b", classes=3, image_suffix="_training", mask_suffix="_manual1",
                       roi_dir="fov", roi_suffix="_training_mask")
    assert ds.names == ["21", "22"] and ds[1]["mask"].shape == (16, 24)


def test_a_typo_in_the_split_is_an_error_not_the_whole_folder(tmp_path):
    for split in ("train", "val"):
        _make_folder(tmp_path / split)
    with pytest.raises(DataError, match=r"(?s)no split folder 'vall'.*holds the splits train, val.*split='(train|val)'"):
        build_dataset("folder", tmp_path, "vall", classes=3)


def test_val_fraction_holds_out_a_fixed_part_of_a_flat_folder(tmp_path):
    stems = [f"s{i}" for i in range(10)]
    _make_folder(tmp_path, stems=stems, exts=[".png"] * 10)
    train = build_dataset("folder", tmp_path, "train", classes=3, val_fraction=0.2)
    val = build_dataset("folder", tmp_path, "val", classes=3, val_fraction=0.2)
    assert len(val) == 2 and len(train) == 8 and not set(train.names) & set(val.names)
    assert build_dataset("folder", tmp_path, "val", classes=3, val_fraction=0.2).names == val.names  # fixed
    with pytest.raises(DataError, match="splits are 'train' and 'val'"):
        build_dataset("folder", tmp_path, "test", classes=3, val_fraction=0.2)


def test_jpeg_index_masks_are_refused_binary_jpeg_masks_are_thresholded(tmp_path):
    _save_image(tmp_path / "images" / "x.png", h=32, w=32)
    (tmp_path / "masks").mkdir()
    idx = np.zeros((32, 32), dtype=np.uint8)
    idx[8:24, 8:24] = 2
    Image.fromarray(idx).save(tmp_path / "masks" / "x.jpg", quality=75)  # the noise stays within 0..2
    with pytest.raises(DataError, match=r"(?s)masks/x.jpg: mask is a JPEG file.*phantom classes.*PNG"):
        build_dataset("folder", tmp_path, classes=3)[0]
    Image.fromarray(idx * 127).save(tmp_path / "masks" / "x.jpg", quality=75)
    mask = build_dataset("folder", tmp_path, classes="bg,fg", binary=True)[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, (idx > 0).astype(np.int64))


def test_16_bit_images_are_scaled_not_clipped_to_white(tmp_path):
    from semiseg.data.io import read_image

    ramp = (np.arange(24, dtype=np.uint16)[None].repeat(16, 0) * 170)  # 0..3910: a 12-bit microscope image
    (tmp_path / "images").mkdir()
    Image.fromarray(ramp).save(tmp_path / "images" / "x.png")
    assert Image.open(tmp_path / "images" / "x.png").mode.startswith("I")
    image = read_image(tmp_path / "images" / "x.png")
    assert image.shape == (16, 24, 3) and image[0, 0, 0] == 0 and image[0, -1, 0] == 255
    assert 100 < image[0, 12, 0] < 155  # the middle of the range stays grey (PIL's conversion gives 255 here)
    fixed = read_image(tmp_path / "images" / "x.png", image_range=(0, 4095))
    assert fixed[0, -1, 0] == round(3910 * 255 / 4095)
    _save_mask(tmp_path / "masks" / "x.png", _stripes())
    assert build_dataset("folder", tmp_path, classes=3, image_range=[0, 4095])[0]["image"].shape == (3, 16, 24)


def test_exif_orientation_is_applied_to_images(tmp_path):
    (tmp_path / "images").mkdir()
    stored = np.zeros((16, 24, 3), dtype=np.uint8)  # stored landscape, shown portrait (orientation 6)
    stored[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "images" / "x.jpg", exif=exif, quality=95)
    upright = np.zeros((24, 16), dtype=np.uint8)  # the mask drawn on the picture as a viewer shows it
    _save_mask(tmp_path / "masks" / "x.png", upright)
    ds = build_dataset("folder", tmp_path, classes=2)
    assert ds[0]["image"].shape == (3, 24, 16)
    # a mask drawn on the stored pixels: the error says why, and exif=False reads them as stored
    _save_mask(tmp_path / "masks" / "x.png", np.zeros((16, 24)))
    with pytest.raises(DataError, match=r"(?s)turned by 90 degrees.*EXIF orientation.*exif=False"):
        build_dataset("folder", tmp_path, classes=2)[0]
    assert build_dataset("folder", tmp_path, classes=2, exif=False)[0]["image"].shape == (3, 16, 24)


def test_duplicate_class_names_are_refused(tmp_path):
    _make_folder(tmp_path)
    with pytest.raises(DataError, match=r"names 'car' more than once"):
        build_dataset("folder", tmp_path, classes="road,car,car")


def test_same_aspect_ratio_other_resolution_is_recognised_and_resized_on_request(tmp_path):
    _save_image(tmp_path / "images" / "x.jpg", h=32, w=48)
    small = np.zeros((16, 24), dtype=np.uint8)
    small[:, 12:] = 1
    _save_mask(tmp_path / "masks" / "x.png", small)
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, classes=2)[0]
    msg = str(e.value)
    assert "24x16" in msg and "48x32" in msg and "the same picture at 1/2 the resolution" in msg
    assert "match_size='resize_mask'" in msg and "match_size='resize_image'" in msg
    up = build_dataset("folder", tmp_path, classes=2, match_size="resize_mask")[0]
    assert up["image"].shape == (3, 32, 48) and up["mask"].shape == (32, 48) and int(up["mask"].sum()) == 32 * 24
    down = build_dataset("folder", tmp_path, classes=2, match_size="resize_image")[0]
    assert down["image"].shape == (3, 16, 24) and down["mask"].shape == (16, 24)
    _save_mask(tmp_path / "masks" / "x.png", np.zeros((20, 20)))  # another aspect ratio: never resized
    with pytest.raises(DataError, match="exactly the size of their image"):
        build_dataset("folder", tmp_path, classes=2, match_size="resize_mask")[0]


def test_ignore_regions_for_binary_masks_roi_folder_and_ignore_value(tmp_path):
    _save_image(tmp_path / "images" / "x.png")
    m = np.zeros((16, 24), dtype=np.uint8)
    m[:, 12:] = 255
    m[0] = 128  # a third value marks ignored pixels
    _save_mask(tmp_path / "labels" / "x.png", m)
    fov = np.full((16, 24), 255, dtype=np.uint8)
    fov[:, :2] = 0  # outside the field of view
    _save_mask(tmp_path / "fov" / "x_mask.png", fov)
    ds = build_dataset("folder", tmp_path, classes="bg,vessel", binary=True, ignore_value=128, mask_dir="labels",
                       roi_dir="fov", roi_suffix="_mask")
    mask = ds[0]["mask"].numpy()
    assert (mask[0] == 255).all() and (mask[1:, :2] == 255).all()
    assert (mask[1:, 2:12] == 0).all() and (mask[1:, 12:] == 1).all()
    with pytest.raises(DataError, match="binary is not set"):
        build_dataset("folder", tmp_path, classes="bg,vessel", ignore_value=128, mask_dir="labels")
    (tmp_path / "fov" / "x_mask.png").unlink()
    with pytest.raises(DataError, match="image has no region mask"):
        build_dataset("folder", tmp_path, classes="bg,vessel", binary=True, mask_dir="labels", roi_dir="fov")


def test_a_data_error_in_a_dataloader_worker_keeps_its_message(tmp_path):
    _make_folder(tmp_path, k=5)  # values 3, 4 outside the 3 classes: raised inside the worker
    ds = build_dataset("folder", tmp_path, classes="a,b,c")
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    msg = str(e.value)
    assert "Traceback" not in msg and "DataLoader worker" not in msg
    assert msg.startswith(str(tmp_path)) and "values 3, 4 outside 0..2" in msg and "\n  fix: " in msg
    assert e.value.fix and "classes" in e.value.fix


def test_option_spelling_is_per_thread_and_always_restored():
    """`semiseg data check` reads in a thread pool: one thread's style must not leak into another or outlive it."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from semiseg.data.errors import option, option_style

    def work(i):
        style = ("python", "cli", "config")[i % 3]
        with option_style(style):
            time.sleep(0.0005)
            return option("binary", True)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(work, range(300)))
    assert results == [("binary=True", "--binary", "data.options.binary=true")[i % 3] for i in range(300)]
    assert option("binary", True) == "binary=True"  # the default again afterwards


def test_image_sizes_reads_headers_of_a_subset_in_its_order(tmp_path):
    from torch.utils.data import Subset

    from semiseg.data.info import image_sizes

    for stem, (h, w) in {"a": (16, 24), "b": (40, 30), "c": (12, 12)}.items():
        _save_image(tmp_path / "images" / f"{stem}.png", h=h, w=w)
        _save_mask(tmp_path / "masks" / f"{stem}.png", np.zeros((h, w)))
    ds = build_dataset("folder", tmp_path, classes="sky,road")
    assert list(image_sizes(ds)) == [(16, 24), (40, 30), (12, 12)]
    assert list(image_sizes(Subset(ds, [2, 0]))) == [(12, 12), (16, 24)]
    synthetic = build_dataset("synthetic", None, length=3, size=[32, 48])
    assert list(image_sizes(Subset(synthetic, [1, 2]))) == [(32, 48), (32, 48)]
    assert image_sizes(torch.utils.data.TensorDataset(torch.zeros(2, 3, 8, 8))) is None  # unknown: caller assumes the worst
