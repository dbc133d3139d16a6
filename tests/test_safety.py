"""Hostile inputs (issue 13): code named by files, run folders that are not runs, locks, resumes that change the
optimizer, diverged weights, and the small failures that used to be tracebacks or silent.

An attack test plants a payload that would create a marker file if it ran and asserts the file is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from semiseg.cli import main
from semiseg.config import ALLOW_CODE_ENV, load_config
from semiseg.engine.checkpoint import load_checkpoint

from conftest import PYTHON, subprocess_env, tiny_overrides

# ---------------------------------------------------------------------------------------------------
# helpers


def tiny_run(tmp_path, name="run", **extra) -> str:
    """A finished tiny run (2 iterations) made with the test fixtures; returns its folder."""
    extra = {"train.iterations": 2, "train.eval_interval": 0, "train.checkpoint_interval": 1, **extra}
    assert main(["train", "--no-progress", *tiny_overrides(output_dir=str(tmp_path), name=name, **extra)]) == 0
    return os.path.join(str(tmp_path), name)


def plant_payload(folder, marker) -> None:
    """``payload_mod.build`` / ``payload_mod.Method`` and a torch.hub ``hubconf.py``: each writes ``marker``."""
    folder.mkdir(exist_ok=True)
    for name in ("payload_mod", "mymod", "hubconf"):  # a module imported by an earlier test had another marker
        sys.modules.pop(name, None)
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "payload_mod.py").write_text(
        "def build(*args, **kwargs):\n    " + code
        + "    from conftest import tiny_model, tiny_dataset\n"
        "    return (tiny_model if isinstance(args[0], int) else tiny_dataset)(*args, **kwargs)\n")
    (folder / "hubconf.py").write_text(code + "def val(*a, **k):\n    pass\n")


def rewrite_config(ckpt_path, **changes) -> None:
    """Change the config stored in a checkpoint (it stays a clean, weights_only-loadable file)."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        ckpt["config"][section][key] = value
    torch.save(ckpt, ckpt_path)


@pytest.fixture
def no_code(monkeypatch):
    """The user did not allow code (the test session allows it for the fixtures' module:function names)."""
    monkeypatch.delenv(ALLOW_CODE_ENV, raising=False)


# ---------------------------------------------------------------------------------------------------
# 1. a checkpoint that loads with weights_only must not name code to run


@pytest.mark.parametrize("command", ["eval", "report", "export", "predict"])
def test_checkpoint_naming_code_is_refused_by_every_command(tmp_path, monkeypatch, capsys, command):
    run = tiny_run(tmp_path)
    marker = tmp_path / "PWNED"
    plant_payload(tmp_path / "evil", marker)
    monkeypatch.syspath_prepend(str(tmp_path / "evil"))
    for name in ("last.pt", "best.pt"):
        rewrite_config(os.path.join(run, name), model__name="payload_mod:build", data__kind="payload_mod:build")
    monkeypatch.delenv(ALLOW_CODE_ENV)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (24, 24)).save(images / "a.png")
    args = {"eval": ["eval", run, "--device", "cpu"], "report": ["report", run, "--samples", "1"],
            "export": ["export", run, "--out", str(tmp_path / "m.onnx")],
            "predict": ["predict", run, str(images), str(tmp_path / "masks"), "--device", "cpu"]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "names code to import" in err and "model.name='payload_mod:build'" in err and "--allow-code" in err
    assert not marker.exists()
    # the user's opt-in: the same command runs the module (here: writes the marker)
    if command != "export":  # (export needs onnx; the opt-in path is the same load_trained_model call)
        assert main(args + ["--allow-code"]) == 0
        assert marker.exists()


def test_torch_hub_in_data_kind_does_not_run_a_hubconf(tmp_path, no_code, capsys):
    # the attack: data.kind torch.hub:load with root at a folder holding hubconf.py, source: local
    run = tiny_run(tmp_path)  # (training from typed overrides needs no opt-in)
    marker = tmp_path / "PWNED"
    plant_payload(tmp_path / "evil", marker)
    ckpt = os.path.join(run, "best.pt")
    rewrite_config(ckpt, model__name="fcn_resnet18", model__options={}, data__kind="torch.hub:load",
                   data__root=str(tmp_path / "evil"), data__options={"source": "local"})
    assert main(["eval", ckpt, "--device", "cpu"]) == 2
    assert "data.kind='torch.hub:load'" in capsys.readouterr().err
    assert not marker.exists()
    assert main(["report", run, "--samples", "1"]) == 2
    assert not marker.exists()


def test_eval_with_a_typed_data_kind_needs_no_opt_in(tmp_path, no_code, capsys):
    # what the user types is trusted: --data kind=... replaces the checkpoint's own data.kind
    run = tiny_run(tmp_path)
    ckpt = os.path.join(run, "last.pt")
    rewrite_config(ckpt, data__kind="torch.hub:load")
    # the model is the fixtures' module:function too, so the refusal names model.name only
    assert main(["eval", ckpt, "--device", "cpu", "--data", "kind=conftest:tiny_dataset"]) == 2
    err = capsys.readouterr().err
    assert "model.name=" in err and "data.kind" not in err


def test_predict_subprocess_does_not_import_a_module_from_the_current_folder(tmp_path):
    # the second attack: model.name mymod:build, mymod.py in the folder where the user runs predict
    run = tiny_run(tmp_path)
    marker = tmp_path / "PWNED"
    work = tmp_path / "work"
    plant_payload(work, marker)
    (work / "mymod.py").write_text((work / "payload_mod.py").read_text())
    for name in ("last.pt", "best.pt"):
        rewrite_config(os.path.join(run, name), model__name="mymod:build")
    images = work / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (24, 24)).save(images / "a.png")
    env = subprocess_env()
    env.pop(ALLOW_CODE_ENV, None)
    proc = subprocess.run([PYTHON, "-m", "semiseg", "predict", run, "images", "out", "--device", "cpu"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "mymod:build" in proc.stderr and "--allow-code" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (work / "out").exists()


def test_resume_of_a_run_whose_config_names_code_needs_the_opt_in(tmp_path, no_code, capsys):
    run = tiny_run(tmp_path)
    marker = tmp_path / "PWNED"
    plant_payload(tmp_path / "evil", marker)
    sys.path.insert(0, str(tmp_path / "evil"))
    try:
        cfg_path = os.path.join(run, "config.yaml")
        text = open(cfg_path).read().replace("conftest:tiny_dataset", "payload_mod:build")
        open(cfg_path, "w").write(text)
        assert main(["train", "--no-progress", "--resume", run, "train.iterations=3"]) == 2
        err = capsys.readouterr().err
        assert "config.yaml names code to import" in err and "data.kind='payload_mod:build'" in err
        assert not marker.exists()
        # typed on the command line = trusted; the model is still the fixtures' module:function
        assert main(["train", "--no-progress", "--resume", run, "data.kind=payload_mod:build"]) == 2
        err = capsys.readouterr().err
        assert "model.name='conftest:tiny_model'" in err and "data.kind=" not in err
        assert not marker.exists()
        assert main(["train", "--no-progress", "--resume", run, "train.iterations=3", "--allow-code"]) == 0
        assert marker.exists()
    finally:
        sys.path.remove(str(tmp_path / "evil"))


def test_a_recipe_the_user_passes_may_name_code(tmp_path, no_code):
    # --config and key=value are the user's own words: module:function there needs no flag
    cfg = load_config(None, tiny_overrides(output_dir=str(tmp_path), name="r"))
    assert cfg.model.name == "conftest:tiny_model"
    assert main(["train", "--no-progress", *tiny_overrides(output_dir=str(tmp_path), name="r",
                                                             **{"train.iterations": 1, "train.eval_interval": 0})]) == 0
    assert load_checkpoint(os.path.join(str(tmp_path), "r", "last.pt"))["iteration"] == 1


# ---------------------------------------------------------------------------------------------------
# 2. --overwrite deletes only what semiseg wrote, in a folder semiseg made, inside output_dir


def train_args(tmp_path, **extra):
    extra = {"train.iterations": 1, "train.eval_interval": 0, **extra}
    return ["train", "--no-progress", *tiny_overrides(**{"output_dir": str(tmp_path / "p" / "runs"), **extra})]


def test_overwrite_with_name_dotdot_does_not_delete_the_parent(tmp_path, capsys):
    # the steps: p/ holds a config.yaml (so it looked like a run) and the user's code
    (tmp_path / "p" / "src").mkdir(parents=True)
    (tmp_path / "p" / "runs").mkdir()
    (tmp_path / "p" / "config.yaml").write_text("x: 1\n")
    (tmp_path / "p" / "src" / "main.py").write_text("code\n")
    assert main(train_args(tmp_path, name="..") + ["--overwrite"]) == 2
    assert "name='..' does not name a folder inside output_dir" in capsys.readouterr().err
    assert (tmp_path / "p" / "src" / "main.py").read_text() == "code\n"
    assert sorted(os.listdir(tmp_path / "p")) == ["config.yaml", "runs", "src"]


@pytest.mark.parametrize("name", ["../../x", "../x", ".", "/tmp/semiseg-abs-name-test"])
def test_names_that_leave_output_dir_are_refused(tmp_path, capsys, name):
    assert main(train_args(tmp_path, name=name)) == 2
    assert "does not name a folder inside output_dir" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not os.path.exists("/tmp/semiseg-abs-name-test")
    assert not (tmp_path / "p" / "runs").exists()  # refused before anything was created


def test_overwrite_refuses_a_folder_semiseg_did_not_make(tmp_path, capsys):
    folder = tmp_path / "p" / "runs" / "old"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("x: 1\n")  # looks like a run (or an older semiseg's run): no marker
    (folder / "notes.txt").write_text("mine\n")
    assert main(train_args(tmp_path, name="old") + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to overwrite {folder}: it was not created by semiseg (no .semiseg-run marker)" in err
    assert "older than the marker" in err
    assert sorted(os.listdir(folder)) == ["config.yaml", "notes.txt"]


def test_overwrite_deletes_only_the_run_files(tmp_path, capsys):
    assert main(train_args(tmp_path, name="r")) == 0
    run = tmp_path / "p" / "runs" / "r"
    (run / "notes.txt").write_text("mine\n")
    (run / "eval_val.json").write_text("{}")  # written by semiseg eval: a run file
    (run / "report").mkdir()
    (run / "report" / "index.html").write_text("<html>")
    (run / "report" / "my_figure.svg").write_text("mine")
    (run / "data").mkdir()
    (run / "data" / "x.png").write_text("mine")
    capsys.readouterr()
    assert main(train_args(tmp_path, name="r") + ["--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "kept what semiseg did not write: data, notes.txt, report/my_figure.svg" in err
    assert (run / "notes.txt").exists() and (run / "data" / "x.png").exists() and (run / "report" / "my_figure.svg").exists()
    assert not (run / "eval_val.json").exists() and not (run / "report" / "index.html").exists()
    assert load_checkpoint(str(run / "last.pt"))["iteration"] == 1  # the new run


def test_overwrite_removes_a_symlink_not_its_target(tmp_path):
    assert main(train_args(tmp_path, name="r")) == 0
    run = tmp_path / "p" / "runs" / "r"
    precious = tmp_path / "precious.pt"
    precious.write_text("keep")
    os.remove(run / "best.pt")
    os.symlink(precious, run / "best.pt")
    assert main(train_args(tmp_path, name="r") + ["--overwrite"]) == 0
    assert precious.read_text() == "keep"


# ---------------------------------------------------------------------------------------------------
# 6. one training process per run folder


def test_a_second_trainer_on_a_locked_folder_names_the_holder(tmp_path, capsys):
    from semiseg.engine.run_dir import RunLock

    folder = tmp_path / "p" / "runs" / "r"
    folder.mkdir(parents=True)
    lock = RunLock(str(folder)).acquire()  # another process that has just created the folder
    try:
        assert main(train_args(tmp_path, name="r")) == 2
        err = capsys.readouterr().err
        assert f"run folder {folder} is in use by another semiseg training process (PID {os.getpid()})" in err
        assert os.listdir(folder) == [".semiseg.lock"]  # nothing written by the refused run
    finally:
        lock.release()
    assert main(train_args(tmp_path, name="r")) == 0


def test_resume_while_the_run_trains_is_refused_and_kill_9_leaves_no_stale_lock(tmp_path, capsys):
    import signal
    import time

    run = tmp_path / "runs" / "long"
    args = tiny_overrides(output_dir=str(tmp_path / "runs"), name="long",
                          **{"train.iterations": 100000, "train.eval_interval": 0, "train.checkpoint_interval": 1})
    child = subprocess.Popen([PYTHON, "-m", "semiseg", "train", "--no-progress", *args], env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (run / "last.pt").exists():
            assert child.poll() is None and time.time() < deadline, child.stderr.read().decode() if child.poll() else ""
            time.sleep(0.2)
        assert main(["train", "--no-progress", "--resume", str(run)]) == 2
        assert f"is in use by another semiseg training process (PID {child.pid})" in capsys.readouterr().err
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    from semiseg.engine.run_dir import RunLock

    RunLock(str(run)).acquire().release()  # the OS dropped the killed process's lock


# ---------------------------------------------------------------------------------------------------
# 3. --resume applies the optimizer overrides it records, and refuses the ones it could not apply


def test_resume_applies_optim_overrides_it_records(tmp_path, capsys):
    from semiseg.engine.logger import read_metrics

    run = tiny_run(tmp_path, **{"train.iterations": 4, "train.log_interval": 1})
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", run, "train.iterations=6", "optim.lr=0.5",
                 "optim.weight_decay=0.3", "optim.momentum=0.5"]) == 0
    err = capsys.readouterr().err
    assert "optimizer 'model' group 'head': base lr 0.1 -> 5.0" in err and "weight_decay 0.0005 -> 0.3" in err
    saved = load_config(os.path.join(run, "config.yaml")).optim
    assert (saved.lr, saved.weight_decay, saved.momentum) == (0.5, 0.3, 0.5)
    # the rate the step used is the new one on the new schedule, from the first resumed step
    lr5 = next(e["lr"] for e in read_metrics(run) if e["kind"] == "train" and e["iteration"] == 5)
    assert lr5 == pytest.approx(0.5 * (1 - 4 / 6) ** 0.9)
    resumed = next(e for e in read_metrics(run) if e["kind"] == "resume")
    assert any("weight_decay 0.0005 -> 0.3" in c for c in resumed["changed"])
    ckpt = load_checkpoint(os.path.join(run, "last.pt"))
    groups = ckpt["optimizers"]["model"]["param_groups"]
    assert [(g["weight_decay"], g["momentum"], g["initial_lr"]) for g in groups] == [(0.3, 0.5, 0.5), (0.3, 0.5, 5.0)]
    assert ckpt["schedulers"]["model"]["base_lrs"] == [0.5, 5.0]


@pytest.mark.parametrize("override", ["optim.name=adamw", "data.labeled.fraction=0.5", "train.seed=3",
                                      "model.options={width: 4}", "model.weights=elsewhere.pth"])
def test_resume_refuses_changes_the_restored_state_would_ignore(tmp_path, capsys, override):
    run = tiny_run(tmp_path)
    before = open(os.path.join(run, "config.yaml")).read()
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", run, "train.iterations=3", override]) == 2
    err = capsys.readouterr().err
    assert f"--resume cannot change {override.split('=')[0].split('.fraction')[0]}" in err and "Traceback" not in err
    assert open(os.path.join(run, "config.yaml")).read() == before  # nothing recorded


# ---------------------------------------------------------------------------------------------------
# 4. the "last good checkpoint" of a divergence holds finite weights and statistics


@pytest.mark.parametrize("lr", ["1e3", "1e6"])
def test_huge_lr_never_saves_non_finite_weights(tmp_path, capsys, lr):
    # with BatchNorm, running_var overflows while the loss is still finite (the issue: inf in the "good" checkpoint)
    args = tiny_overrides(output_dir=str(tmp_path), name="r", **{
        "model.options": "{batchnorm: true}", "optim.lr": lr, "train.iterations": 20, "train.eval_interval": 1,
        "train.checkpoint_interval": 1})
    assert main(["train", "--no-progress", *args]) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "nothing was saved" in err
    run = os.path.join(str(tmp_path), "r")
    from semiseg.engine.checkpoint import nonfinite_tensors

    for name in ("last.pt", "best.pt"):
        if os.path.exists(os.path.join(run, name)):
            ckpt = load_checkpoint(os.path.join(run, name))
            assert nonfinite_tensors(ckpt["model"]) == [] and nonfinite_tensors(ckpt["optimizers"]) == []
            if name == "last.pt":
                assert f"last.pt (iteration {ckpt['iteration']}), unchanged, with finite weights" in err
    # the logged evaluations are of finite weights only
    from semiseg.engine.logger import read_metrics

    evals = [e["iteration"] for e in read_metrics(run) if e["kind"] == "eval"]
    assert evals == list(range(1, len(evals) + 1))


def test_a_checkpoint_holding_inf_is_refused_by_eval_and_resume(tmp_path, capsys):
    run = tiny_run(tmp_path, **{"model.options": "{batchnorm: true}"})
    for name in ("last.pt", "best.pt"):
        path = os.path.join(run, name)
        ckpt = torch.load(path, weights_only=True)
        ckpt["model"]["body.1.running_var"][0] = float("inf")
        torch.save(ckpt, path)
    assert main(["eval", run, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "best.pt holds non-finite weights or statistics in 1 tensor(s) (body.1.running_var)" in err
    assert main(["train", "--no-progress", "--resume", run, "train.iterations=3"]) == 2
    assert "cannot resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# 7. the smaller ones: clear errors in the user's terms


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
    ("optim.momentum=5", "optim.momentum (SGD momentum) must be in [0, 1)"),
    ("optim.momentum=1.0", "optim.momentum (SGD momentum) must be in [0, 1)"),
    ("optim.grad_clip=-1", "optim.grad_clip must be a positive number"),
    ("model.name=deeplabv3_resnet50", "unknown model.name 'deeplabv3_resnet50'; available: deeplabv2_resnet101"),
    ("loss.name=focal", "unknown loss.name 'focal'; available: ce, dice, ce+dice"),
    ("method.name=mean_teacher", "unknown method.name 'mean_teacher'; available: advsemiseg"),
    ("data.kind=mapillary", "unknown data.kind 'mapillary'; available: synthetic"),
    ("loss.ohem_min_kept=-1", "loss.ohem_min_kept >= 0"),
    ("model.options.bogus=1", "fcn_resnet18 takes head_lr_mult, learn_upsampling"),
    ("model.options.learn_upsampling=[1]", "model.options"),
])
def test_invalid_values_and_unknown_names_are_config_errors(tmp_path, capsys, override, message):
    base = ["train", "--no-progress", "model.name=fcn_resnet18", "data.kind=synthetic", f"output_dir={tmp_path}"]
    assert main([*base, override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []


def test_adamw_beta_is_checked_in_its_own_words():
    from semiseg.config import ConfigError

    with pytest.raises(ConfigError, match=r"optim.momentum \(the first Adam beta\) must be in \[0, 1\)"):
        load_config(None, ["optim.name=adamw", "optim.momentum=1.5"])


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_unreadable_last_pt_says_why_and_points_at_best_pt(tmp_path, capsys, damage):
    run = tiny_run(tmp_path)
    last = os.path.join(run, "last.pt")
    data = open(last, "rb").read()
    open(last, "wb").write(data[: len(data) // 2] if damage == "truncate" else b"")
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", run, "train.iterations=3"]) == 2
    err = capsys.readouterr().err
    reason = "the file is truncated or not a PyTorch file" if damage == "truncate" else "the file is empty"
    assert f"cannot read checkpoint {last}: {reason}" in err
    assert "best.pt (its best evaluation), can be used instead" in err and "cp " in err
    assert main(["eval", last, "--device", "cpu"]) == 2
    assert reason in capsys.readouterr().err


def test_permission_denied_is_not_called_corruption(tmp_path, monkeypatch, capsys):
    run = tiny_run(tmp_path)
    best = os.path.join(run, "best.pt")
    if os.geteuid() == 0:  # root reads anything: let the open fail as it would for another user
        real_load = torch.load

        def load(f, *a, **k):
            if os.fspath(f) == best:
                raise PermissionError(13, "Permission denied", best)
            return real_load(f, *a, **k)

        monkeypatch.setattr(torch, "load", load)
    else:
        os.chmod(best, 0)
    assert main(["eval", run, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {best}: permission denied" in err and "not damaged" in err
    assert "corrupt" not in err and "truncated" not in err

    from PIL import Image

    from semiseg.data.errors import DataError
    from semiseg.data.io import read_image

    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(image)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(image))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(DataError, match="permission denied") as e:
        read_image(image)
    assert "corrupt" not in str(e.value)


def make_images(folder, names, size=(24, 24)):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for name in names:
        Image.new("RGB", size, (200, 30, 30)).save(folder / name)


def test_predict_skips_an_unreadable_image_writes_the_rest_and_exits_1(tmp_path, capsys):
    run = tiny_run(tmp_path)
    images = tmp_path / "images"
    make_images(images, ["a.png", "c.jpg"])
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    capsys.readouterr()
    assert main(["predict", run, str(images), str(tmp_path / "out"), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
    assert "wrote 2 masks" in captured.out
    assert "skipped:" in captured.err and "1 image(s) could not be read" in captured.err
    assert str(images / "b.png") in captured.err.splitlines()[-1]


def test_predict_keeps_images_with_one_name_apart(tmp_path, capsys):
    # x.jpg and x.png used to both write x.png (and count two masks)
    run = tiny_run(tmp_path)
    images = tmp_path / "images"
    make_images(images, ["x.jpg", "x.png", "y.png"])
    assert main(["predict", run, str(images), str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["x.jpg.png", "x.png.png", "y.png"]
    assert "wrote 3 masks" in capsys.readouterr().out


def test_a_large_image_in_whole_mode_gets_a_hint_about_slide(tmp_path, capsys):
    run = tiny_run(tmp_path)
    images = tmp_path / "images"
    make_images(images, ["big.png"], size=(1000, 1000))  # 1 MP, 1736x the 24x24 training crop
    make_images(images, ["small.png"])
    assert main(["predict", run, str(images), str(tmp_path / "out"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: big.png is 1000x1000 (1.0 megapixels" in err and "--mode slide --crop 24 24" in err
    assert err.count("warning: ") == 1
    assert main(["predict", run, str(images), str(tmp_path / "out2"), "--device", "cpu", "--mode", "slide"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_batch_size_1_with_deeplabv3plus_is_a_config_error_before_training(tmp_path, capsys):
    args = ["train", "--no-progress", "model.name=deeplabv3plus_mobilenetv2", "model.pretrained_backbone=false",
            "data.kind=synthetic", "data.options={size: 32, length: 4}", "data.crop_size=[32,32]", "data.batch_size=1",
            "data.num_workers=0", "train.device=cpu", "train.tensorboard=false", f"output_dir={tmp_path}", "name=r"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs at least 2 images per training forward pass" in err and "data.batch_size to at least 2" in err
    assert not (tmp_path / "r").exists()  # the failed start left no folder behind


def test_a_recipe_that_is_not_text_is_a_config_error(tmp_path):
    from semiseg.config import ConfigError

    (tmp_path / "r.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="is not a text file"):
        load_config(tmp_path / "r.yaml")
