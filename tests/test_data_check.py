"""`semiseg data check`: statistics of a good dataset, and every problem of a bad one in one pass."""

import numpy as np
from PIL import Image

from semiseg.cli import main
from semiseg.data import build_dataset
from semiseg.data.check import check_dataset


def _pair(root, stem, mask, image_size=None, ext=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_size or mask.shape
    Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(root / "images" / f"{stem}{ext}")
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(root / "masks" / f"{stem}.png")


def _good(root):
    m = np.zeros((10, 20), dtype=np.uint8)
    m[:, 10:] = 1
    m[0] = 255
    _pair(root, "a", m)
    _pair(root, "b", np.full((12, 20), 2, dtype=np.uint8))
    return root


def test_report_counts_sizes_frequencies_and_ignore(tmp_path):
    ds = build_dataset("folder", _good(tmp_path), classes="road,car,tree", strict=False)
    report = check_dataset(ds)
    assert report.ok and report.problems == []
    assert report.num_samples == report.num_checked == 2
    assert report.sizes == {(20, 10): 1, (20, 12): 1}
    assert report.class_pixels.tolist() == [90, 90, 240] and report.class_images.tolist() == [1, 1, 1]
    assert report.ignore_pixels == 20
    text = report.format()
    assert "images: 2 listed, 2 checked" in text and "problems: none" in text and "(ignore)" in text
    assert "size spread: 2 sizes from 20x10 to 20x12" in text


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    _good(tmp_path)
    _pair(tmp_path, "bad_values", np.full((10, 20), 7))  # 7 is not a class of 3
    _pair(tmp_path, "wrong_size", np.zeros((10, 20)), image_size=(11, 20))
    _pair(tmp_path, "binary", np.where(np.arange(20) < 10, 0, 255)[None].repeat(10, 0))
    _pair(tmp_path, "truncated", np.zeros((64, 64)), ext=".jpg")
    jpg = tmp_path / "images" / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:500])
    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(tmp_path / "images" / "no_mask.png")

    ds = build_dataset("folder", tmp_path, classes="road,car,tree", strict=False)
    report = check_dataset(ds)
    assert not report.ok and len(report.errors) == 4 and len(report.warnings) == 1
    by_file = {p.path.split("/")[-1]: p for p in report.problems}
    assert "image has no mask" in by_file["no_mask.png"].message
    assert "values 7" in by_file["bad_values.png"].message
    assert "11" in by_file["wrong_size.png"].message or "20x11" in str(by_file["wrong_size.png"])
    assert "truncated" in by_file["truncated.jpg"].message
    assert by_file["binary.png"].severity == "warning" and "binary=True" in by_file["binary.png"].fix
    assert report.num_checked == 6  # the good ones were still counted
    text = report.format()
    assert "4 error(s), 1 warning(s)" in text and "no_mask.png" in text and "fix:" in text


def test_cli_check_ok_and_problem_exit_codes(tmp_path, capsys):
    _good(tmp_path / "good")
    assert main(["data", "check", str(tmp_path / "good"), "--classes", "road,car,tree"]) == 0
    out = capsys.readouterr().out
    assert "classes: 3" in out and "problems: none" in out

    binary = tmp_path / "binary"
    _pair(binary, "leaf_01", np.where(np.arange(20) < 10, 0, 255)[None].repeat(10, 0))
    _pair(binary, "leaf_02", np.where(np.arange(20) < 10, 0, 1)[None].repeat(10, 0))  # one mask has a class 1
    assert main(["data", "check", str(binary), "--classes", "camvid"]) == 0  # a warning only
    out = capsys.readouterr().out
    assert "leaf_01.png" in out and "--binary" in out
    assert main(["data", "check", str(binary), "--classes", "camvid", "--strict"]) == 1
    capsys.readouterr()
    (binary / "masks" / "leaf_02.png").unlink()
    (binary / "images" / "leaf_02.png").unlink()
    # nothing but 0 and 255 in every mask: the scores would read 100%, so it is an error, not a warning
    assert main(["data", "check", str(binary), "--classes", "background,leaf"]) == 1
    out = capsys.readouterr().out
    assert "no mask holds any class but 'background'" in out and "mIoU 100" in out and "set --binary" in out
    assert main(["data", "check", str(binary), "--classes", "background,leaf", "--binary"]) == 0
    assert "problems: none" in capsys.readouterr().out

    _pair(tmp_path / "good", "bad", np.full((10, 20), 9))
    assert main(["data", "check", str(tmp_path / "good"), "--classes", "3"]) == 1
    assert "values 9" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "good")]) == 1  # folder without --classes
    assert "--classes" in capsys.readouterr().err  # errors go to stderr, as in every other command


def test_cli_split_info_preview_and_synthetic(tmp_path, capsys):
    _good(tmp_path / "ds")
    out_file = tmp_path / "run" / "split.txt"
    assert main(["data", "split", str(tmp_path / "ds"), "--classes", "3", "--count", "1", "-o", str(out_file)]) == 0
    assert "1 labeled, 1 unlabeled" in capsys.readouterr().out and "[unlabeled]" in out_file.read_text()
    assert main(["data", "info", "synthetic", "--split", "val"]) == 0
    assert "200 samples" in capsys.readouterr().out
    assert main(["data", "check", "synthetic", "--split", "val", "--limit", "5"]) == 0
    assert "5 checked" in capsys.readouterr().out
    assert main(["data", "preview", "synthetic", "--out", str(tmp_path / "pv"), "-n", "2"]) == 0
    assert len(list((tmp_path / "pv").glob("*.png"))) == 2


def test_repeated_problems_are_grouped_with_counts_and_a_few_examples(tmp_path, capsys):
    # the animal set: every mask is its image at half the resolution
    for i in range(12):
        _pair(tmp_path, f"cat_{i:02d}", np.zeros((10, 20)), image_size=(20, 40))
    ds = build_dataset("folder", tmp_path, classes="background,cat", strict=False)
    report = check_dataset(ds)
    assert len(report.errors) == 12 and {p.kind for p in report.errors} == {"size_scale"}
    text = report.format(max_examples=3)
    assert "error: 12 masks are their image at another resolution (same aspect ratio)" in text
    assert sum("masks/cat_" in line for line in text.splitlines()) == 3 and "... and 9 more" in text
    assert text.count("fix") == 1 and "match_size" in text
    assert len(text.splitlines()) < 25  # not 12 two-line errors
    assert main(["data", "check", str(tmp_path), "--classes", "background,cat", "--max-errors", "0"]) == 1
    out = capsys.readouterr().out
    assert sum("masks/cat_" in line for line in out.splitlines()) == 12 and "--match-size resize_mask" in out
    assert main(["data", "check", str(tmp_path), "--classes", "background,cat", "--match-size", "resize_mask"]) == 0
    assert "problems: none" in capsys.readouterr().out


def test_headers_only_check_finds_sizes_and_mask_values_without_decoding_images(tmp_path):
    _good(tmp_path)
    _pair(tmp_path, "wrong_size", np.zeros((10, 20)), image_size=(11, 20))
    _pair(tmp_path, "bad_values", np.full((10, 20), 7))
    ds = build_dataset("folder", tmp_path, classes="road,car,tree", strict=False)
    report = check_dataset(ds, decode_images=False)
    kinds = sorted(p.kind for p in report.errors)
    assert kinds == ["mask_values", "size"]
