"""A newcomer's own data end to end (issue 15, issue 13 items 5 and 7): folders of real files through
`semiseg train`, errors before the first step in the terms the user typed, evaluation of mixed sizes,
and what the command line prints."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from semiseg.cli import main

from conftest import tiny_overrides


def run_train(tmp_path, *overrides, name="run"):
    return main(["train", "--no-progress", *tiny_overrides(output_dir=str(tmp_path), name=name), *overrides])


def scene(rng, h, w, num_classes=3):
    """A tiny picture: rectangles whose colour says the class, on a dark background (class 0)."""
    image = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(2):
        c = int(rng.integers(1, num_classes))
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        image[y:y + h // 3, x:x + w // 3] = (200, 40, 40) if c == 1 else (40, 200, 40)
        mask[y:y + h // 3, x:x + w // 3] = c
    return image, mask


def write_folder(root, sizes, *, seed=0, mask_ext=".png", binary=False, image_ext=".png", mask_dir="masks"):
    """ROOT/images/NAME + ROOT/<mask_dir>/NAME with one (h, w) per sample; binary: 0/255 masks of 2 classes."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, mask_dir), exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        image, mask = scene(rng, h, w, 2 if binary else 3)
        if binary:
            mask = mask * 255
        Image.fromarray(image).save(os.path.join(root, "images", f"s{i:02d}{image_ext}"))
        Image.fromarray(mask).save(os.path.join(root, mask_dir, f"s{i:02d}{mask_ext}"))
    return str(root)


def folder_overrides(root, classes="[bg, red, green]", **options):
    opts = ", ".join([f"classes: {classes}", *(f"{k}: {v}" for k, v in options.items())])
    return [f"data.kind=folder", f"data.root={root}", f"data.options={{{opts}}}"]


MIXED = [(40, 48), (36, 52), (40, 48), (44, 30), (40, 48), (33, 41)]


# ---------------------------------------------------------------------------------------------------
# item 7: what the command line prints


def test_no_progress_still_prints_log_lines_and_evaluations(tmp_path, capsys):
    assert run_train(tmp_path) == 0
    out = capsys.readouterr().out
    assert "iteration 2/12: loss" in out and "img/s" in out
    assert "iteration 6: val mIoU" in out and "iteration 12: val mIoU" in out


def test_warnings_print_as_one_clean_line(capsys):
    from semiseg.cli import clean_warnings

    before = warnings.showwarning
    with clean_warnings(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("data.photometric=true recolours the padding of the crops", UserWarning)
    assert warnings.showwarning is before  # restored after the command
    err = capsys.readouterr().err
    assert err == "warning: data.photometric=true recolours the padding of the crops\n"  # no source line, no class


# ---------------------------------------------------------------------------------------------------
# item 1: whole-image evaluation of validation images of different sizes


def test_eval_batches_of_mixed_sizes_equal_per_image_evaluation(tmp_path):
    import torch

    from semiseg.data import build_dataset
    from semiseg.data.transforms import build_eval_transform
    from semiseg.engine.evaluate import evaluate, make_eval_loader
    from conftest import TinyNet

    ds = build_dataset("folder", write_folder(tmp_path / "val", MIXED), classes="bg,red,green",
                       transform=build_eval_transform())
    torch.manual_seed(0)
    model = TinyNet(3, batchnorm=True)
    one = evaluate(model, make_eval_loader(ds, batch_size=1), 3).mat
    four = evaluate(model, make_eval_loader(ds, batch_size=4), 3).mat
    assert torch.equal(one, four) and int(one.sum()) == sum(h * w for h, w in MIXED)


def test_training_on_a_folder_of_mixed_sizes_with_eval_batches(tmp_path, capsys):
    train = write_folder(tmp_path / "data" / "train", MIXED * 2, seed=1)
    write_folder(tmp_path / "data" / "val", MIXED, seed=2)
    assert train
    assert run_train(tmp_path, *folder_overrides(tmp_path / "data"), "eval.batch_size=4") == 0
    out = capsys.readouterr().out
    assert "iteration 12: val mIoU" in out


def test_a_run_folder_without_checkpoint_does_not_block_the_rerun(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # what a run that crashed before its first save leaves (semiseg marked the folder as its own when it made it)
    for name in ("config.yaml", "split.txt", "metrics.jsonl", ".semiseg-run"):
        (run / name).write_text("")
    assert run_train(tmp_path, "train.iterations=2", "train.eval_interval=0") == 0
    out = capsys.readouterr().out
    assert "stopped before its first checkpoint" in out and (run / "last.pt").is_file()
    assert run_train(tmp_path, "train.iterations=2") == 2  # with a checkpoint it is protected again
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# item 4 and issue 13 items 5 and 7: errors before the first step, in the recipe's terms


def failed_run(tmp_path, capsys, *overrides, started=False):
    """Run `semiseg train` expecting the pre-flight to stop it (``started``: the first step to fail): exit 2,
    no traceback, no run folder left."""
    code = run_train(tmp_path, *overrides)
    captured = capsys.readouterr()
    assert code == 2, captured
    err = captured.err
    assert err.startswith("error: ") and ("\n  fix: " in err or "\n      fix: " in err)
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert (tmp_path / "run").exists() == started
    assert "iteration 1" not in captured.out
    return err


def test_unknown_loss_name_is_an_error_before_the_data_is_read(tmp_path, capsys):
    err = failed_run(tmp_path, capsys, "loss.name=focal")
    assert "unknown loss.name 'focal'" in err and "fix: use one of ce, dice, ce+dice" in err


def test_mask_problems_stop_the_run_before_training_in_recipe_terms(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data / "train", MIXED)
    write_folder(data / "val", MIXED[:2], seed=3)
    err = failed_run(tmp_path, capsys, *folder_overrides(data, classes="[bg, red]"))  # masks hold 0, 1, 2
    assert "found before training" in err and "values 2 outside 0..1" in err
    assert "check the class list (data.options.classes)" in err
    assert f"`semiseg data check {data} --split train --classes bg,red --max-errors 0`" in err  # the same read


def test_binary_masks_without_binary_are_an_error_not_miou_100(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data / "train", MIXED, binary=True)
    write_folder(data / "val", MIXED[:2], binary=True, seed=3)
    err = failed_run(tmp_path, capsys, *folder_overrides(data, classes="[background, cell]"))
    assert "mIoU 100" in err and "data.options.binary=true" in err
    assert run_train(tmp_path, *folder_overrides(data, classes="[background, cell]", binary="true"), name="ok") == 0


def test_validation_on_the_training_images_is_refused(tmp_path, capsys):
    flat = write_folder(tmp_path / "flat", MIXED)  # ROOT/images + ROOT/masks, no train/ val/
    err = failed_run(tmp_path, capsys, *folder_overrides(flat))
    assert "validation reads training images: 6 of the 6 images" in err and "has no 'val' folder" in err
    assert "data.options.val_fraction=0.2" in err
    assert run_train(tmp_path, *folder_overrides(flat, val_fraction=0.34), name="ok") == 0  # the fix works
    capsys.readouterr()
    split = tmp_path / "split"
    write_folder(split / "train", MIXED)
    write_folder(split / "val", MIXED[:2], seed=3)
    err = failed_run(tmp_path, capsys, *folder_overrides(split), "data.val_split=vall")
    assert "no split folder 'vall'" in err and "data.val_split=val" in err


def test_a_truncated_image_is_found_before_the_first_step_not_at_iteration_15(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data / "train", MIXED * 3, image_ext=".jpg")
    write_folder(data / "val", MIXED[:2], seed=3)
    bad = data / "train" / "images" / "s13.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:700])
    err = failed_run(tmp_path, capsys, *folder_overrides(data))
    assert "s13.jpg" in err and "truncated or corrupt" in err


def test_an_error_inside_a_dataloader_worker_reads_as_the_data_error(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data / "train", MIXED)
    write_folder(data / "val", MIXED[:2], seed=3)
    err = failed_run(tmp_path, capsys, *folder_overrides(data, classes="[bg, red]"), "data.check=off",
                     "data.num_workers=1", started=True)
    assert "values 2 outside 0..1" in err and "data.options.classes" in err


def test_duplicate_class_names_and_unknown_dataset_options(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data / "train", MIXED)
    write_folder(data / "val", MIXED[:2], seed=3)
    err = failed_run(tmp_path, capsys, *folder_overrides(data, classes="[bg, car, car]"))
    assert "names 'car' more than once" in err
    err = failed_run(tmp_path, capsys, *folder_overrides(data, clases="[bg, red, green]"))
    assert "no option 'clases' (data.options.clases)" in err and "the valid keys of data.options: classes" in err
