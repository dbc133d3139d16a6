"""The built-in synthetic dataset: deterministic, varied, every class present (its rendering speed:
benchmarks/synthetic_render_speed.py; timings are not unit tests)."""

import numpy as np
import pytest
import torch

from semiseg.data import DataError, build_dataset
from semiseg.data.synthetic import CLASSES, SyntheticShapes
from semiseg.data.transforms import build_train_transform


def test_samples_are_deterministic_and_splits_differ():
    a, b = SyntheticShapes("train"), SyntheticShapes("train")
    for i in (0, 7):
        ia, ma = a.read(i)
        ib, mb = b.read(i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert not np.array_equal(a.read(0)[0], a.read(1)[0])
    assert not np.array_equal(a.read(0)[0], SyntheticShapes("val").read(0)[0])
    assert not np.array_equal(a.read(0)[0], SyntheticShapes("train", seed=1).read(0)[0])


def test_rendered_scenes_are_cached_within_budget_and_callers_cannot_change_them(monkeypatch):
    import pickle

    from semiseg.data import synthetic

    ds = SyntheticShapes("train", size=64)
    first = ds.read(3)
    first[0][:] = 0  # a caller writing into its copy
    again = ds.read(3)
    fresh = synthetic.render_scene(ds.stream(3), 64, 64)
    assert np.array_equal(again[0], fresh[0]) and np.array_equal(again[1], fresh[1])
    assert list(ds._rendered) == [3]
    assert pickle.loads(pickle.dumps(ds))._rendered == {}  # a spawned worker starts empty
    # past the budget a scene is rendered each time, still the same scene
    monkeypatch.setattr(synthetic, "RENDER_CACHE_BYTES", 64 * 64 * 4 + 1)
    small = SyntheticShapes("train", size=64)
    for i in (0, 1, 0):
        assert np.array_equal(small.read(i)[0], SyntheticShapes("train", size=64).render(small.stream(i))[0])
    assert list(small._rendered) == [0]


def test_contract_attributes_and_sample_types():
    ds = build_dataset("synthetic", split="val", length=5, size=(64, 96))
    assert len(ds) == 5 and ds.names == [f"val_{i:05d}" for i in range(5)]
    assert ds.classes == CLASSES and ds.num_classes == len(CLASSES) == 8 and ds.ignore_index == 255
    assert ds.palette.shape == (8, 3) and len({tuple(c) for c in ds.palette}) == 8
    s = ds[0]
    assert s["image"].shape == (3, 64, 96) and s["image"].dtype == torch.uint8
    assert s["mask"].shape == (64, 96) and s["mask"].dtype == torch.int64
    assert len(SyntheticShapes("train")) == 1000 and len(SyntheticShapes("val")) == 200
    with pytest.raises(DataError, match="unknown synthetic split"):
        SyntheticShapes("dev")


def test_scenes_have_all_classes_objects_and_clutter():
    ds = SyntheticShapes("train")
    hist = np.zeros(len(CLASSES))
    for i in range(40):
        image, mask = ds.read(i)
        assert image.dtype == np.uint8 and mask.max() < len(CLASSES)
        hist += np.bincount(mask.ravel(), minlength=len(CLASSES))
        assert (mask > 0).any()
    share = hist / hist.sum()
    assert (share[1:] > 0.004).all(), share  # every object class shows up
    assert 0.6 < share[0] < 0.95  # background dominates, as in real scenes, but not overwhelmingly


def test_colour_alone_does_not_identify_the_class():
    # Disc and square share a colour family: their mean colours must be close, so shape has to decide.
    ds = SyntheticShapes("train")
    means = {1: [], 3: []}
    for i in range(60):
        image, mask = ds.read(i)
        for c in means:
            if (mask == c).sum() > 30:
                means[c].append(image[mask == c].mean(0))
    disc, square = np.mean(means[1], 0), np.mean(means[3], 0)
    assert np.abs(disc - square).max() < 40, (disc, square)


def test_batches_through_a_dataloader_with_train_transform():
    ds = build_dataset("synthetic", length=8, transform=build_train_transform(64, scale_range=(0.75, 1.25)))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    assert batch["mask"].dtype == torch.int64


# ---------------------------------------------------------------------------------------------------
# synthetic_thin: the built-in thin-structure task (issue 15 item 5)


def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of binary erosion with a 3x3 cross (border pixels count as background)."""
    p = np.pad(mask, 1)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def test_synthetic_thin_is_binary_thin_and_deterministic():
    from semiseg.data.synthetic_thin import SyntheticThin

    ds = build_dataset("synthetic_thin", split="val", length=6)
    assert ds.classes == ["background", "vessel"] and ds.num_classes == 2 and ds.ignore_index == 255
    masks = [ds.read(i)[1] for i in range(6)]
    fg = np.stack(masks).astype(bool)
    assert set(np.unique(fg.astype(np.uint8))) == {0, 1}
    assert 0.01 < fg.mean() < 0.2  # a few per cent of the pixels, like retina vessels
    # 1-3 px wide: two erosions leave almost nothing (crossings and the widest ends)
    left = sum(_erode(_erode(m)).sum() for m in fg)
    assert left < 0.05 * fg.sum()
    image, mask = SyntheticThin("val").read(0)
    assert np.array_equal(mask, masks[0]) and image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert not np.array_equal(mask, SyntheticThin("train").read(0)[1])
    # vessels are darker than their surroundings
    assert image[mask.astype(bool)].mean() < image[~mask.astype(bool)].mean() - 5


@pytest.mark.parametrize("h, w, cells, channels", [(128, 128, 3, 3), (64, 96, 3, 3), (37, 129, 5, 2), (200, 33, 2, 1)])
def test_smooth_field_is_bitwise_the_einsum_it_replaces(h, w, cells, channels):
    """The background field is summed term by term for speed; the scenes must stay exactly what they were."""
    from semiseg.data import synthetic

    def einsum_field(rng):  # the original implementation
        grid = rng.random((cells, cells, channels)).astype(np.float32)

        def interp(n):
            pos = np.linspace(0, cells - 1, n, dtype=np.float32)
            lo = np.minimum(np.floor(pos).astype(int), cells - 2)
            m = np.zeros((n, cells), dtype=np.float32)
            m[np.arange(n), lo] = 1 - (pos - lo)
            m[np.arange(n), lo + 1] = pos - lo
            return m

        return np.einsum("hi,ijc,wj->hwc", interp(h), grid, interp(w))

    for seed in range(20):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        new, old = synthetic._smooth_field(a, h, w, cells, channels), einsum_field(b)
        assert new.dtype == old.dtype == np.float32 and new.shape == (h, w, channels)
        assert np.array_equal(new, old) and new.flags.c_contiguous
        assert a.random() == b.random()  # the same random numbers drawn
