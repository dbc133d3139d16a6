"""StrongAugment.batch: the per-image Compose's draws and pixels, to the bit, for a whole batch at once."""

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from semiseg.data.strong_augment import StrongAugment
from semiseg.data.transforms import build_strong_augment, denormalize, normalize, strong_augment_batch


@pytest.mark.parametrize("seed", range(12))
def test_batch_equals_the_per_image_compose_and_leaves_the_generator_where_it_would(seed):
    augment = StrongAugment()
    reference = v2.Compose(list(augment.transforms))  # the same transforms, called image by image
    images = torch.randint(0, 256, (16, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    expected = torch.stack([reference(tv_tensors.Image(x)).as_subclass(torch.Tensor) for x in images])
    next_draw = torch.rand(3)
    torch.manual_seed(seed)
    out = augment.batch(images)
    assert torch.equal(out, expected)
    assert torch.equal(torch.rand(3), next_draw)
    assert not torch.equal(out, images)


def test_every_branch_is_taken_over_a_few_batches():
    # the equality above means something only if jitter (each op in each slot), grayscale and blur all happen
    augment = StrongAugment()
    torch.manual_seed(0)
    draws = [augment._draw() for _ in range(64)]
    jittered = [d.jitter for d in draws if d.jitter is not None]
    assert {tuple(j["fn_idx"]) for j in jittered} and {j["fn_idx"][0] for j in jittered} == {0, 1, 2, 3}
    assert any(d.grayscale for d in draws) and any(d.blur_sigma for d in draws)
    assert any(d.jitter is None for d in draws)


def test_strong_augment_batch_takes_the_batched_path_and_a_custom_compose_still_works():
    batch = normalize(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    torch.manual_seed(1)
    fast = strong_augment_batch(batch, augment=build_strong_augment())
    torch.manual_seed(1)
    slow = strong_augment_batch(batch, augment=v2.Compose(list(build_strong_augment().transforms)))
    assert torch.equal(fast, slow) and fast.dtype == torch.float32
    inverted = strong_augment_batch(batch, augment=v2.RandomInvert(p=1.0))  # any v2 transform, image by image
    assert torch.equal(inverted, normalize(255 - denormalize(batch)))
