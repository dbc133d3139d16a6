"""ConfusionMatrix against matrices and metrics worked out by hand on tiny label maps."""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semiseg.metrics import ConfusionMatrix, to_json_dict

IGN = 255

# 3 classes, 2x4 label map with two ignored pixels. Pixel by pixel (target -> pred):
#   row 0: 0->0  0->0  0->1  1->1
#   row 1: 1->2  2->2  255->0  255->2    (ignored pixels, any prediction)
TARGET = torch.tensor([[0, 0, 0, 1], [1, 2, IGN, IGN]])
PRED = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 2]])
# rows = target, cols = prediction
HAND_MATRIX = [
    [2, 1, 0],
    [0, 1, 1],
    [0, 0, 1],
]
# TP = [2, 1, 1], GT (row sums) = [3, 2, 1], PR (col sums) = [2, 2, 2], N = 6
HAND_IOU = [2 / (3 + 2 - 2), 1 / (2 + 2 - 1), 1 / (1 + 2 - 1)]  # 2/3, 1/3, 1/2
HAND_DICE = [2 * 2 / (3 + 2), 2 * 1 / (2 + 2), 2 * 1 / (1 + 2)]  # 4/5, 1/2, 2/3
HAND_CLASS_ACC = [2 / 3, 1 / 2, 1 / 1]
HAND_ACC = 4 / 6
HAND_FWIOU = 3 / 6 * 2 / 3 + 2 / 6 * 1 / 3 + 1 / 6 * 1 / 2


def _cm(pred=PRED, target=TARGET, n=3):
    cm = ConfusionMatrix(n, ignore_index=IGN)
    cm.update(pred, target)
    return cm


def test_matrix_matches_hand_count():
    cm = _cm()
    assert cm.mat.dtype == torch.int64
    assert cm.mat.tolist() == HAND_MATRIX


def test_metrics_match_hand_formulas():
    r = _cm().compute()
    assert r["iou"] == pytest.approx(HAND_IOU)
    assert r["miou"] == pytest.approx(sum(HAND_IOU) / 3)
    assert r["dice"] == pytest.approx(HAND_DICE)
    assert r["mdice"] == pytest.approx(sum(HAND_DICE) / 3)
    assert r["class_acc"] == pytest.approx(HAND_CLASS_ACC)
    assert r["macc"] == pytest.approx(sum(HAND_CLASS_ACC) / 3)
    assert r["acc"] == pytest.approx(HAND_ACC)
    assert r["fwiou"] == pytest.approx(HAND_FWIOU)
    # Plain Python types, so the dict goes straight into json / yaml.
    assert all(isinstance(r[k], float) for k in ("miou", "acc", "macc", "fwiou", "mdice"))
    assert all(isinstance(x, float) for k in ("iou", "dice", "class_acc") for x in r[k])


def test_dice_equals_f1_from_precision_and_recall():
    r = _cm().compute()
    tp, pr, gt = [2, 1, 1], [2, 2, 2], [3, 2, 1]
    for c in range(3):
        precision, recall = tp[c] / pr[c], tp[c] / gt[c]
        assert r["dice"][c] == pytest.approx(2 * precision * recall / (precision + recall))


def test_ignored_pixels_change_nothing():
    base = _cm()
    # Same valid pixels, every ignored pixel now predicted as a different class (and more ignored pixels added).
    target = torch.cat([TARGET, torch.full((1, 4), IGN)])
    pred = torch.cat([torch.tensor([[0, 0, 1, 1], [2, 2, 1, 1]]), torch.tensor([[2, 1, 0, 2]])])
    other = _cm(pred, target)
    assert other.mat.tolist() == base.mat.tolist()
    assert other.compute() == base.compute()
    # An all-ignored batch adds nothing at all.
    base.update(torch.tensor([[0, 1], [2, 0]]), torch.full((2, 2), IGN))
    assert base.mat.tolist() == HAND_MATRIX


def test_absent_class_is_nan_and_excluded_from_means():
    # 4 classes: class 3 appears in neither target nor prediction.
    r = _cm(n=4).compute()
    assert math.isnan(r["iou"][3]) and math.isnan(r["dice"][3]) and math.isnan(r["class_acc"][3])
    assert r["iou"][:3] == pytest.approx(HAND_IOU)
    assert r["miou"] == pytest.approx(sum(HAND_IOU) / 3)  # mean over 3 classes, not 4
    assert r["mdice"] == pytest.approx(sum(HAND_DICE) / 3)
    assert r["macc"] == pytest.approx(sum(HAND_CLASS_ACC) / 3)
    assert r["fwiou"] == pytest.approx(HAND_FWIOU)


def test_class_only_predicted_counts_as_zero_iou():
    # Class 2 is predicted once but never in the target: IoU 0 (counted), recall undefined (NaN, excluded).
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    r = _cm(pred, target).compute()
    assert r["iou"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert r["miou"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert r["class_acc"][:2] == pytest.approx([0.5, 1.0]) and math.isnan(r["class_acc"][2])
    assert r["macc"] == pytest.approx(0.75)
    # fwIoU weighs by target frequency: class 2 has weight 0.
    assert r["fwiou"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_empty_matrix_is_all_nan():
    r = ConfusionMatrix(2).compute()
    assert all(math.isnan(r[k]) for k in ("miou", "acc", "macc", "fwiou", "mdice"))


def test_accumulation_equals_one_big_update_and_reset():
    torch.manual_seed(0)
    target = torch.randint(0, 5, (4, 7, 9))
    target[target == 4] = IGN  # some ignored pixels
    pred = torch.randint(0, 4, (4, 7, 9))
    whole = ConfusionMatrix(4)
    whole.update(pred, target)
    parts = ConfusionMatrix(4)
    for i in range(4):
        parts.update(pred[i], target[i])
    assert torch.equal(parts.mat, whole.mat)
    assert int(whole.mat.sum()) == int((target != IGN).sum())
    # Reference count with an explicit loop over pixels.
    ref = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != IGN:
            ref[t, p] += 1
    assert torch.equal(whole.mat, ref)
    whole.reset()
    assert int(whole.mat.sum()) == 0


def test_logits_are_reduced_by_argmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, 0] = IGN
    a = ConfusionMatrix(3)
    a.update(logits, target)
    b = ConfusionMatrix(3)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.mat, b.mat)


def test_uint8_target_and_any_leading_dims():
    cm = ConfusionMatrix(3)
    cm.update(PRED.to(torch.uint8)[None, None], TARGET.to(torch.uint8)[None, None])
    assert cm.mat.tolist() == HAND_MATRIX


def test_errors_are_clear():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    # Target values outside [0, C) other than ignore_index: the message names them.
    with pytest.raises(ValueError, match=r"\[3, 7\]"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 3], [7, IGN]]))
    with pytest.raises(ValueError, match=r"\[-1\]"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"pred contains class indices \[5\]"):
        cm.update(torch.tensor([5, 0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="4 channels"):
        cm.update(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        cm.update(torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="argmax"):  # float pred of the target's shape is ambiguous
        cm.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    assert int(cm.mat.sum()) == 0  # failed updates leave no partial counts


def test_ignore_index_other_than_255():
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, -1, 2]))
    assert cm.mat.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_json_helper_and_table():
    cm = _cm(n=4)
    r = cm.compute()
    js = to_json_dict(r)
    assert js["iou"][3] is None and js["iou"][:3] == pytest.approx(HAND_IOU)
    json.dumps(js, allow_nan=False)  # strict JSON: would raise on NaN
    text = cm.table(["bg", "cat", "dog", "bird"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc", "Dice", "pixels"]
    assert lines[2].split() == ["bg", "66.67", "66.67", "80.00", "3"]
    assert lines[5].split() == ["bird", "-", "-", "-", "0"]
    assert lines[-1].startswith(f"mIoU {100 * sum(HAND_IOU) / 3:.2f}  aAcc {100 * HAND_ACC:.2f}")
    with pytest.raises(ValueError, match="class names"):
        cm.table(["a", "b"])


def test_all_reduce_without_distributed_is_noop():
    cm = _cm()
    cm.all_reduce()
    assert cm.mat.tolist() == HAND_MATRIX


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matrix_follows_model_device():
    cm = ConfusionMatrix(3)
    cm.update(PRED.cuda(), TARGET.cuda())
    assert cm.mat.device.type == "cuda" and cm.mat.tolist() == HAND_MATRIX


# ---------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, pred: torch.Tensor, target: torch.Tensor, out: str):
    # Loopback only: the test must not depend on the machine's hostname or network interfaces.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        cm = ConfusionMatrix(4)
        cm.update(pred[rank::world_size], target[rank::world_size])  # each rank sees half of the images
        cm.all_reduce()
        torch.save({"mat": cm.mat, "metrics": cm.compute()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_two_processes_equals_single_process(tmp_path):
    torch.manual_seed(0)
    target = torch.randint(0, 4, (6, 8, 8))
    target[:, :2] = IGN
    pred = torch.randint(0, 4, (6, 8, 8))
    single = ConfusionMatrix(4)
    single.update(pred, target)

    out = str(tmp_path / "result")
    mp.spawn(_ddp_worker, args=(2, _free_port(), pred, target, out), nprocs=2, join=True)
    for rank in range(2):
        res = torch.load(f"{out}.{rank}", weights_only=False)
        assert torch.equal(res["mat"], single.mat), f"rank {rank}"
        assert to_json_dict(res["metrics"]) == to_json_dict(single.compute())


# ---------------------------------------------------------------------- fast counting path
def _reference(pred, target, n, ignore):
    ref = torch.zeros(n, n, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != ignore:
            ref[t, p] += 1
    return ref


@pytest.mark.parametrize("ignore", [255, -1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.int32])
def test_counts_equal_a_pixel_loop_for_any_ignore_index_and_dtype(ignore, dtype):
    """The bincount-over-all-pixels path (ignored pixels in a dropped row) against a plain loop."""
    if dtype == torch.uint8 and ignore < 0:
        pytest.skip("uint8 cannot hold a negative ignore_index")
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (3, 5, 6), generator=g)
    target[torch.rand(3, 5, 6, generator=g) < 0.2] = ignore
    pred = torch.randint(0, 4, (3, 5, 6), generator=g)
    cm = ConfusionMatrix(4, ignore_index=ignore)
    cm.update(pred.to(dtype), target.to(dtype))
    assert torch.equal(cm.mat, _reference(pred, target, 4, ignore))


def test_out_of_range_prediction_under_ignored_pixels_is_not_an_error():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 9, -4, 2]), torch.tensor([0, IGN, IGN, 1]))
    assert cm.mat.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_a_bad_target_value_below_the_ignore_index_is_still_caught():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\[100\]"):  # 100 < 255: inside the fast path's bins, outside the classes
        cm.update(torch.zeros(3, dtype=torch.long), torch.tensor([0, 100, IGN]))
    with pytest.raises(ValueError, match=r"\[300\]"):  # above the ignore index
        cm.update(torch.zeros(3, dtype=torch.long), torch.tensor([0, 300, IGN]))
    cm.update(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))  # empty batch: nothing
    assert int(cm.mat.sum()) == 0
