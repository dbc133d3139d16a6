"""Joint image/mask transforms: geometry stays aligned, padding uses mean/ignore, normalisation modes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from semiseg.config import ConfigError, load_config
from semiseg.data import DataError
from semiseg.data.palettes import voc_colormap
from semiseg.data.transforms import (
    CAFFE_MEAN_BGR,
    NORMALIZATIONS,
    build_eval_transform,
    build_strong_augment,
    build_train_transform,
    denormalize,
    describe_normalization,
    mean_rgb_uint8,
    normalize,
    strong_augment_batch,
)

PALETTE = torch.from_numpy(voc_colormap(8).astype(np.int64))  # distinct, far-apart colours


def _coded_pair(h=30, w=40, seed=0, block=5):
    """An image whose colour encodes its mask's class at every pixel, so alignment can be checked after."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 8, (h // block, w // block), generator=g)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)
    image = PALETTE[mask].permute(2, 0, 1).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def _decode(image_uint8):
    """Class of each pixel from its colour: nearest palette colour."""
    dist = ((image_uint8.permute(1, 2, 0)[..., None, :].long() - PALETTE) ** 2).sum(-1)
    return dist.argmin(-1)


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_crop_and_flip_keep_image_and_mask_aligned(mode):
    torch.manual_seed(0)
    t = build_train_transform((24, 32), scale_range=None, normalization=mode)
    for seed in range(10):
        image, mask = t(*_coded_pair(seed=seed))
        assert image.shape == (3, 24, 32) and image.dtype == torch.float32 and type(image) is torch.Tensor
        assert mask.shape == (24, 32) and mask.dtype == torch.int64 and type(mask) is torch.Tensor
        assert torch.equal(_decode(denormalize(image, mode)), mask)


def test_random_scale_resizes_masks_with_nearest_and_stays_aligned():
    torch.manual_seed(1)
    t = build_train_transform(40, scale_range=(0.5, 2.0))
    image0, mask0 = _coded_pair(120, 160, block=20)
    agree = []
    for _ in range(10):
        image, mask = t(image0, mask0)
        valid = mask != 255
        assert set(mask.unique().tolist()) <= set(mask0.unique().tolist()) | {255}  # no interpolated labels
        agree.append((_decode(denormalize(image))[valid] == mask[valid]).float().mean().item())
    assert min(agree) > 0.85  # only bilinear-blurred boundary pixels may disagree (misaligned: ~0.2)


def test_padding_uses_mean_for_image_and_ignore_for_mask():
    image = tv_tensors.Image(torch.full((3, 10, 10), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(10, 10, dtype=torch.int64))
    for mode in NORMALIZATIONS:
        out_img, out_mask = build_train_transform(30, scale_range=None, hflip=False, normalization=mode)(image, mask)
        pad = out_mask == 255
        assert pad.sum() == 30 * 30 - 100 and (out_mask[~pad] == 1).all()
        assert out_img[:, pad].abs().max() < 0.02 * (255 if mode.startswith("caffe") else 1)  # mean-padded -> ~0
    out_img, out_mask = build_train_transform(30, scale_range=None, ignore_index=7)(image, mask)
    assert set(out_mask.unique().tolist()) == {1, 7}
    assert mean_rgb_uint8("imagenet") == (124, 116, 104)


def test_caffe_is_bgr_mean_subtracted_and_both_modes_invert():
    px = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    out = normalize(px, "caffe").flatten()
    expected = torch.tensor([30 - CAFFE_MEAN_BGR[0], 20 - CAFFE_MEAN_BGR[1], 10 - CAFFE_MEAN_BGR[2]])
    torch.testing.assert_close(out, expected)
    imnet = normalize(px, "imagenet").flatten()
    torch.testing.assert_close(imnet[0], torch.tensor((10 / 255 - 0.485) / 0.229))
    rgb = normalize(px, "caffe_rgb").flatten()  # the same numbers in RGB order
    torch.testing.assert_close(rgb, torch.tensor([10.0, 20.0, 30.0]) - torch.tensor(CAFFE_MEAN_BGR).flip(0))
    image = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    for mode in NORMALIZATIONS:
        assert torch.equal(denormalize(normalize(image, mode), mode), image)
        assert describe_normalization(mode)
    with pytest.raises(DataError, match="unknown normalization"):
        normalize(image, "bgr")


# ------------------------------------------------------------------ the input pipelines of the reference code
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "voc"
ADVSEMISEG_IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)  # train.py IMG_MEAN
PYTORCH_FCN_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])  # VOCClassSegBase.mean_bgr


def advsemiseg_input(rgb: np.ndarray) -> torch.Tensor:
    """hfslyc/AdvSemiSeg dataset/voc_dataset.py (VOCDataSet, no scale/crop/mirror) on an RGB uint8 image."""
    image = rgb[:, :, ::-1]  # cv2.imread(..., cv2.IMREAD_COLOR) gives BGR
    image = np.asarray(image, np.float32)
    image -= ADVSEMISEG_IMG_MEAN  # the BGR mean from the BGR image
    image = image[:, :, ::-1]  # "change to BGR": the channels are reversed after the mean, so RGB
    return torch.from_numpy(image.transpose((2, 0, 1)).copy())


def pytorch_fcn_input(rgb: np.ndarray) -> torch.Tensor:
    """wkentaro/pytorch-fcn VOCClassSegBase.transform on an RGB uint8 image."""
    img = rgb[:, :, ::-1]  # RGB -> BGR
    img = img.astype(np.float64)
    img -= PYTORCH_FCN_MEAN_BGR
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float()


def semiseg_input(rgb: np.ndarray, normalization: str) -> torch.Tensor:
    image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    mask = tv_tensors.Mask(torch.zeros(rgb.shape[:2], dtype=torch.int64))
    return build_eval_transform(normalization=normalization)(image, mask)[0]


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*deeplabv2*.yaml")))
def test_deeplabv2_gets_advsemiseg_input_and_fcn_vgg_gets_pytorch_fcn_input(recipe):
    from semiseg.engine.build import model_normalization
    from semiseg.models.deeplabv2 import DeepLabV2
    from semiseg.models.fcn_vgg import FCNVGG16

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    expected = advsemiseg_input(rgb)
    cfg = load_config(str(RECIPES / recipe), [])
    auto = load_config(str(RECIPES / recipe), ["data.normalization=auto"])
    for normalization in (model_normalization(cfg, DeepLabV2), model_normalization(auto, DeepLabV2)):
        assert normalization == "caffe_rgb"
        torch.testing.assert_close(semiseg_input(rgb, normalization), expected, rtol=0, atol=0)
    # pytorch-fcn's FCN-VGG16 weights see BGR: "caffe", the default of an FCN-VGG16 not built on torchvision's VGG16
    fcn_default = FCNVGG16.__init__.__kwdefaults__["normalization"]
    assert fcn_default == "caffe"
    torch.testing.assert_close(semiseg_input(rgb, fcn_default), pytorch_fcn_input(rgb))
    assert not torch.allclose(expected, pytorch_fcn_input(rgb))  # the two orders differ on this image


def test_strong_augment_changes_image_only():
    torch.manual_seed(0)
    image, mask = _coded_pair()
    strong = build_strong_augment()
    changed = 0
    for _ in range(10):
        out_image, out_mask = strong(image, mask)
        assert torch.equal(out_mask, mask) and out_image.shape == image.shape and out_image.dtype == torch.uint8
        changed += not torch.equal(out_image, image)
    assert changed >= 7  # colour jitter alone is applied with p=0.8
    batch = normalize(torch.stack([image] * 6))
    out = strong_augment_batch(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    distinct = {tuple(x.flatten()[:50].tolist()) for x in out}
    assert len(distinct) > 2  # identical inputs, different outputs: parameters are drawn per image


def test_train_transform_with_strong_and_eval_transform():
    image, mask = _coded_pair()
    img, msk = build_train_transform(16, strong=True)(image, mask)
    assert img.shape == (3, 16, 16) and msk.dtype == torch.int64
    img, msk = build_eval_transform()(image, mask)
    assert img.shape == (3, 30, 40) and torch.equal(msk, mask.as_subclass(torch.Tensor))
    img, msk = build_eval_transform(size=(15, 20))(image, mask)
    assert img.shape == (3, 15, 20) and msk.shape == (15, 20)
    assert set(msk.unique().tolist()) <= set(mask.unique().tolist())
    with pytest.raises(DataError, match="scale range"):
        build_train_transform(16, scale_range=(2.0, 1.0))


def test_photometric_distortion_changes_colours_not_geometry_or_mask():
    torch.manual_seed(0)
    image, mask = _coded_pair()
    plain = build_train_transform((30, 40), scale_range=None, hflip=False)
    coloured = build_train_transform((30, 40), scale_range=None, hflip=False, photometric=True)
    base_img, base_msk = plain(image, mask)
    changed = 0
    for _ in range(8):
        img, msk = coloured(image, mask)
        assert torch.equal(msk, base_msk)  # the mask and the geometry never move
        changed += int(not torch.allclose(img, base_img))
    assert changed >= 4  # four ops at p=0.5 each: at least one applies in ~94% of draws


def test_brightness_range_sets_the_photometric_brightness_factor():
    # A flat grey image: contrast, saturation and hue jitter leave it as it is, so every output pixel is the
    # brightness factor times 200 - here 0.5x when the jitter applies (p=0.5), 1x when it does not (+-3: the hue
    # jitter's uint8 round trip through HSV).
    torch.manual_seed(0)
    grey = tv_tensors.Image(torch.full((3, 8, 8), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.int64))
    t = build_train_transform(8, scale_range=None, hflip=False, photometric=True, brightness_range=(0.5, 0.5))
    levels = set()
    for _ in range(40):
        out = denormalize(t(grey, mask)[0]).int()
        assert out.max() - out.min() <= 1  # still flat
        level = [lv for lv in (100, 200) if abs(int(out[0, 0, 0]) - lv) <= 3]
        assert len(level) == 1
        levels.add(level[0])
    assert levels == {100, 200}
    with pytest.raises(DataError, match="only by the photometric"):
        build_train_transform(8, brightness_range=(0.5, 1.0))
    with pytest.raises(DataError, match="0 <= min <= max"):
        build_train_transform(8, photometric=True, brightness_range=(1.2, 0.8))


def test_brightness_range_config_checks():
    assert load_config(None, ["data.photometric=true", "data.brightness_range=[0.4,1.25]"]).data.brightness_range == [0.4, 1.25]
    with pytest.raises(ConfigError, match="photometric distortion, which is off"):
        load_config(None, ["data.brightness_range=[0.4,1.25]"])
    with pytest.raises(ConfigError, match=r"data.brightness_range must be \[min, max\]"):
        load_config(None, ["data.photometric=true", "data.brightness_range=[1.5,0.5]"])


def test_quarter_turns_rotate_image_and_mask_together_and_use_all_four_angles():
    torch.manual_seed(0)
    t = build_train_transform(40, scale_range=None, hflip=False, rotate90=True)
    image0, mask0 = _coded_pair(40, 40, block=5)
    seen = set()
    for _ in range(40):
        image, mask = t(image0, mask0)
        assert torch.equal(_decode(denormalize(image)), mask)  # still aligned
        turns = [k for k in range(4) if torch.equal(mask, torch.rot90(mask0, k, (-2, -1)))]
        assert len(turns) == 1  # an exact quarter turn of the input, not a resampled one
        seen.add(turns[0])
    assert seen == {0, 1, 2, 3}


def test_quarter_turns_need_a_square_crop():
    with pytest.raises(DataError, match="square crop"):
        build_train_transform((24, 32), rotate90=True)
    from semiseg.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.rotate90 needs a square crop.*data.crop_size=\[24, 24\]"):
        load_config(None, ["data.rotate90=true", "data.crop_size=[24,32]"])
    assert load_config(None, ["data.rotate90=true", "data.crop_size=[24,24]"]).data.rotate90
