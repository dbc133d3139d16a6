"""benchmarks/miou_by_group.py --unlabeled: the development signal that decided CamVid rounds 2-5 (BENCHMARKS.md).

It must score exactly the images the run's split.txt lists as unlabeled, each group on its own, against their masks.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import TinyShapes, load_benchmark, tiny_overrides
from semiseg.config import load_config
from semiseg.data.splits import Split
from semiseg.engine.predict import load_trained_model, predict_mask
from semiseg.engine.trainer import Trainer

miou_by_group = load_benchmark("miou_by_group")


class Sequences(TinyShapes):
    """TinyShapes named like CamVid frames, by sequence: A_000, B_001, A_002, ..."""

    def __init__(self, split: str = "train", **options):
        super().__init__(split, **options)
        self.names = [f"{'AB'[i % 2]}_{i:03d}" for i in range(self.length)]


def sequences_dataset(root, split, *, transform=None, **options) -> Sequences:
    return Sequences(split, transform=transform, **options)


def _miou_by_hand(loaded, dataset: Sequences, indices: list[int]) -> float:
    """Pooled per-class IoU over these images, classes in neither truth nor prediction left out (metrics.py's rule)."""
    inter, union = np.zeros(4), np.zeros(4)
    for i in indices:
        sample = dataset[i]
        pred, true = predict_mask(loaded, sample["image"]), sample["mask"].numpy()
        for c in range(4):
            inter[c] += ((pred == c) & (true == c)).sum()
            union[c] += ((pred == c) | (true == c)).sum()
    present = union > 0
    return 100 * float(np.mean(inter[present] / union[present]))


def test_unlabeled_miou_by_group_scores_exactly_the_unlabeled_images_per_group(tmp_path):
    cfg = load_config(None, tiny_overrides(output_dir=str(tmp_path), name="run", **{
        "data.kind": "test_benchmark_diagnostics:sequences_dataset", "data.labeled.count": 5,
        "data.labeled.seed": 1, "train.iterations": 8, "train.eval_interval": 0}))
    Trainer(cfg, cfg.run_dir, progress=False).fit()

    result = miou_by_group.unlabeled_miou_by_group(cfg.run_dir, "_")

    dataset = Sequences("train")  # uint8 images and the true masks, which the run never trained on for these
    labeled, unlabeled = Split.load(os.path.join(cfg.run_dir, "split.txt")).indices(dataset.names)
    assert len(labeled) == 5 and len(unlabeled) == 11
    loaded = load_trained_model(os.path.join(cfg.run_dir, "last.pt"), device=torch.device("cpu"))
    expected = {"all": unlabeled, "A": [i for i in unlabeled if i % 2 == 0], "B": [i for i in unlabeled if i % 2]}
    assert set(result) == set(expected)
    for group, indices in expected.items():
        images, miou = result[group]
        assert images == len(indices)
        assert miou == pytest.approx(_miou_by_hand(loaded, dataset, indices), abs=1e-6)
    # the labeled images are not in it: scoring all 16 gives another number
    assert result["all"][1] != pytest.approx(_miou_by_hand(loaded, dataset, list(range(16))), abs=1e-6)


bn_adaptation_probe = load_benchmark("bn_adaptation_probe")


def test_group_statistics_are_the_average_over_the_groups_batches_and_leave_the_model_alone():
    """AdaBN as the CamVid diagnostic uses it: running mean = the mean of the batch means over the group's images,
    running variance = the mean of the batch (unbiased) variances; a lone last image is skipped (ASPP's pooled branch
    cannot normalise one value); the trained model keeps its own statistics."""
    from semiseg.engine.evaluate import make_eval_loader

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    images = [torch.randn(3, 5, 6) * (i + 1) + i for i in range(5)]
    samples = [{"image": x, "mask": torch.zeros(5, 6, dtype=torch.long), "name": f"A_{i}"} for i, x in enumerate(images)]
    loader = make_eval_loader(samples, batch_size=2)  # batches of 2, 2 and 1: the last is skipped

    adapted = bn_adaptation_probe.with_group_statistics(model, loader, precision="fp32", channels_last=False,
                                                        inference=None)

    with torch.no_grad():
        features = [model[0](torch.stack(images[i:i + 2])) for i in (0, 2)]
    means = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    variances = torch.stack([f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in features]).mean(0)
    bn = adapted[1]
    assert not adapted.training and not bn.training
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, variances)
    torch.testing.assert_close(model[1].running_mean, torch.zeros(4))  # the original is untouched
    torch.testing.assert_close(model[1].running_var, torch.ones(4))


pseudo_label_log = load_benchmark("pseudo_label_log")


def test_pseudo_label_log_averages_each_window_without_the_steps_that_kept_nothing():
    records = [{"kind": "start", "iteration": 0}, {"kind": "train", "iteration": 10, "loss": 1.0}]  # warm-up: no key
    records += [{"kind": "train", "iteration": i, "pseudo_acc": acc} for i, acc in
                [(20, 0.5), (30, 0.7), (40, float("nan")), (50, 0.9)]]
    records.append({"kind": "eval", "iteration": 50, "pseudo_acc": 0.0})  # not a train record
    means = pseudo_label_log.window_means(records, "pseudo_acc", [(0, 10), (10, 30), (30, 50)])
    assert means[0] is None  # only the warm-up step, which logged no pseudo labels
    assert means[1] == pytest.approx(0.6)  # steps 20 and 30: the window is (lo, hi]
    assert means[2] == pytest.approx(0.9)  # step 40's NaN (no kept pixel) is left out, the eval record too
    assert pseudo_label_log.parse_window("800-1000") == (800, 1000)
    for bad in ("1000-800", "800", "a-b"):
        with pytest.raises(Exception, match="LO-HI"):
            pseudo_label_log.parse_window(bad)


top_confusions = load_benchmark("top_confusions")


def test_top_confusions_reads_rows_as_true_classes_and_ranks_their_predictions():
    # rows: true class; columns: predicted. 10 "road" pixels: 6 right, 3 called "pavement", 1 "car".
    confusion = np.array([[6, 3, 1], [4, 5, 0], [0, 0, 0]])
    classes = ["road", "pavement", "car"]
    shares = top_confusions.top_confusions(confusion, classes, ["road", "pavement", "car"], top=2)
    assert shares["road"] == [("road", 0.6), ("pavement", 0.3)]
    assert shares["pavement"] == [("pavement", 5 / 9), ("road", 4 / 9)]
    assert shares["car"] == []  # no labelled car pixel: nothing to share out


def test_top_confusions_cli_names_the_run_and_rejects_unknown_classes(tmp_path, capsys, monkeypatch):
    run = tmp_path / "my_run"
    run.mkdir()
    path = run / "eval_test_last.json"
    path.write_text(json.dumps({"classes": ["road", "pavement"], "confusion_matrix": [[9, 1], [3, 1]]}))
    monkeypatch.setattr(sys, "argv", ["top_confusions.py", str(path), "--classes", "pavement", "--top", "2"])
    top_confusions.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| run | pavement |"
    assert out[2] == "| my_run | road 75, pavement 25 |"
    monkeypatch.setattr(sys, "argv", ["top_confusions.py", str(path), "--classes", "tree"])
    with pytest.raises(SystemExit):
        top_confusions.main()
    assert "no class tree" in capsys.readouterr().err
