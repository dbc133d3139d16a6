"""A table of hostile and malformed inputs: each row builds one in a temporary folder, runs the semiseg command a
new user (or an attacker) would, and prints what happened.

    python benchmarks/hostile_inputs.py                  # every row (about 5 minutes on 2 busy cores)
    python benchmarks/hostile_inputs.py --only resume    # rows whose area or case contains a word
    python benchmarks/hostile_inputs.py --markdown       # the table as Markdown

Columns: ``expected`` is what semiseg should do (``error``: stop with a clear message naming the file / key and
the fix, and change nothing; ``works``: do the right thing). ``got`` is what it did:

    clear error    exit status != 0, a message naming what the row checks for, no traceback, no side effect
    unclear error  exit status != 0 but the message lacks what the row checks for
    worked         exit status 0 and the result is right
    silent         exit status 0 but the result is wrong, or an attack's payload ran (the worst kind)
    traceback      an exception escaped the command

``verdict`` is OK when ``got`` is what was expected. Attack rows plant a payload that creates a file if it runs,
and check that the file is absent. Commands run in this process through ``semiseg.cli.main`` (one row uses a
subprocess, to run from the attacker's folder); runs are tiny (synthetic 32x32 scenes, batch 2, 2 iterations,
DeepLabV3+ MobileNetV2 without pretrained weights). Exit status: 0 when every row is OK.

tests/test_hostile_inputs.py runs a fast subset of these rows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BASE = [
    "model.name=deeplabv3plus_mobilenetv2", "model.pretrained_backbone=false",
    "data.kind=synthetic", "data.options={size: 32, length: 16}", "data.crop_size=[32,32]", "data.batch_size=2",
    "data.num_workers=0", "train.iterations=2", "train.eval_interval=0", "train.checkpoint_interval=1",
    "train.device=cpu", "train.precision=fp32", "train.channels_last=false", "train.tensorboard=false",
    "train.threads=1", "optim.lr=0.01",
]
FOLDER_MODEL = [o for o in BASE if not o.startswith("data.")] + [
    "data.crop_size=[32,32]", "data.batch_size=2", "data.num_workers=0"]


# ---------------------------------------------------------------------------------------------------
# running a command and judging the outcome


@dataclass
class Result:
    code: int | None
    out: str
    err: str
    exc: str | None = None  # a traceback that escaped

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args: str, cwd: str | None = None) -> Result:
    """``semiseg ARGS`` in this process, with its output captured."""
    from semiseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
                return Result(code, out.getvalue(), err.getvalue())
            except SystemExit as e:  # argparse
                return Result(e.code if isinstance(e.code, int) else 2, out.getvalue(), err.getvalue())
            except BaseException:
                return Result(None, out.getvalue(), err.getvalue(), traceback.format_exc())
    finally:
        os.chdir(old)


def cli_subprocess(*args: str, cwd: str, env_drop=("SEMISEG_ALLOW_CODE",)) -> Result:
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-m", "semiseg", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    exc = proc.stderr if "Traceback (most recent call last)" in proc.stderr else None
    return Result(proc.returncode, proc.stdout, proc.stderr, exc)


def expect_error(res: Result, *mentions: str, harm: str | None = None) -> tuple[str, str]:
    """(got, note) for a row that should stop with an error mentioning ``mentions``; ``harm``: a side effect seen."""
    if harm:
        return "silent", harm
    if res.exc:
        return "traceback", res.exc.strip().splitlines()[-1][:100]
    if res.code == 0:
        return "silent", "exit 0: " + (res.text.strip().splitlines() or [""])[-1][:90]
    lines = [line for line in res.err.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("error")), lines[0] if lines else "")[:110]
    missing = [m for m in mentions if m.lower() not in res.text.lower()]
    if missing:
        return "unclear error", f"lacks {missing[0]!r}: {first}"
    return "clear error", first


def expect_works(res: Result, problem: str | None = None) -> tuple[str, str]:
    """(got, note) for a row that should work; ``problem``: what is wrong with the result (None: right)."""
    if res.exc:
        return "traceback", res.exc.strip().splitlines()[-1][:100]
    if res.code != 0:
        return "error", next((line for line in res.err.splitlines() if line.strip()), "")[:110]
    if problem:
        return "silent", problem
    return "worked", ""


@dataclass
class Case:
    area: str
    name: str
    expected: str  # "error" | "works"
    run: Callable[[str], tuple[str, str]]  # tmp folder -> (got, note)
    fast: bool = False  # in the pytest subset
    needs_run: bool = False  # uses the shared tiny run
    tags: list[str] = field(default_factory=list)


CASES: list[Case] = []


def case(area: str, name: str, expected: str, *, fast: bool = False, needs_run: bool = False):
    def register(fn):
        CASES.append(Case(area, name, expected, fn, fast, needs_run))
        return fn

    return register


# ---------------------------------------------------------------------------------------------------
# shared inputs


class Shared:
    root: str = ""
    run: str = ""

    @classmethod
    def base_run(cls) -> str:
        """A finished tiny run (made once), for rows that evaluate, predict, resume or overwrite."""
        if not cls.run:
            out = os.path.join(cls.root, "_base")
            res = cli("train", "--no-progress", *BASE, f"output_dir={out}", "name=base")
            if res.code != 0:
                raise RuntimeError(f"the base run failed:\n{res.err}\n{res.exc or ''}")
            cls.run = os.path.join(out, "base")
        return cls.run


def copy_run(tmp: str, name: str = "run") -> str:
    """A private copy of the base run at tmp/runs/NAME (its config says output_dir=tmp/runs, name=NAME)."""
    src = Shared.base_run()
    dst = os.path.join(tmp, "runs", name)
    shutil.copytree(src, dst)
    import yaml

    cfg_path = os.path.join(dst, "config.yaml")
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f)
    cfg["output_dir"], cfg["name"] = os.path.join(tmp, "runs"), name
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    return dst


def rewrite_checkpoint(path: str, **changes) -> None:
    """Change the config inside a checkpoint (``section__key=value``); the file stays clean data."""
    import torch

    ckpt = torch.load(path, weights_only=True)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        ckpt["config"][section][key] = value
    torch.save(ckpt, path)


def rewrite_run_checkpoints(run: str, **changes) -> None:
    """``rewrite_checkpoint`` on each of the run's checkpoints (last.pt, and best.pt when there is one)."""
    for name in ("last.pt", "best.pt"):
        if os.path.exists(os.path.join(run, name)):
            rewrite_checkpoint(os.path.join(run, name), **changes)


def payload(folder: str, module: str = "payload_mod") -> str:
    """A module (``MODULE.build``) and a ``hubconf.py`` that create ``folder/PWNED`` when they run."""
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, "PWNED")
    code = f"open({marker!r}, 'w').write('ran')\n"
    with open(os.path.join(folder, f"{module}.py"), "w") as f:
        f.write(code + "def build(*a, **k):\n    raise SystemExit('payload ran')\nclass Method:\n    pass\n")
    with open(os.path.join(folder, "hubconf.py"), "w") as f:
        f.write(code + "def val(*a, **k):\n    return None\n")
    for name in (module, "hubconf"):
        sys.modules.pop(name, None)
    return marker


@contextlib.contextmanager
def on_path(folder: str):
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


@contextlib.contextmanager
def no_allow_code():
    saved = os.environ.pop("SEMISEG_ALLOW_CODE", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["SEMISEG_ALLOW_CODE"] = saved


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(path: str, marker: str) -> str:
    import torch

    torch.save({"format": "semiseg-checkpoint/1", "model": {"w": _Evil(marker)}}, path)
    return path


def harm_if(marker: str) -> str | None:
    return "the payload ran (marker file created)" if os.path.exists(marker) else None


def save_image(path: str, array: np.ndarray, **kwargs) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def scene(i: int, size: int = 32, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    mask = np.zeros((size, size), np.uint8)
    for c in range(1, classes):
        y, x = rng.integers(0, size // 2, 2)
        mask[y:y + size // 3, x:x + size // 3] = c
    image = (rng.integers(0, 40, (size, size, 3)) + mask[..., None] * 80).clip(0, 255).astype(np.uint8)
    return image, mask


def folder_dataset(root: str, *, layout: str = "split", n: int = 4, mask_ext: str = ".png",
                   mask_fn: Callable[[np.ndarray], np.ndarray] | None = None, image_ext: str = ".png") -> str:
    """ROOT/{train,val}/{images,masks} (layout "split") or ROOT/{images,masks} ("flat") of 32x32 scenes, 3 classes."""
    splits = ["train", "val"] if layout == "split" else [""]
    k = 0
    for split in splits:
        for i in range(n):
            image, mask = scene(k)
            k += 1
            save_image(os.path.join(root, split, "images", f"s{k:03d}{image_ext}"), image)
            m = mask_fn(mask) if mask_fn else mask
            save_image(os.path.join(root, split, "masks", f"s{k:03d}{mask_ext}"), m)
    return root


def train_folder(tmp: str, root: str, *extra: str, classes: str = "[a, b, c]") -> Result:
    return cli("train", "--no-progress", *FOLDER_MODEL, "data.kind=folder", f"data.root={root}",
               f"data.options={{classes: {classes}}}", f"output_dir={tmp}/runs", "name=r", *extra)


# ---------------------------------------------------------------------------------------------------
# 1. code named by files


@case("attack", "eval: checkpoint config data.kind=torch.hub:load, root holds hubconf.py", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    marker = payload(os.path.join(tmp, "evil"))
    ckpt = os.path.join(run, "best.pt") if os.path.exists(os.path.join(run, "best.pt")) else os.path.join(run, "last.pt")
    rewrite_checkpoint(ckpt, data__kind="torch.hub:load", data__root=os.path.join(tmp, "evil"),
                       data__options={"source": "local"})
    with no_allow_code():
        res = cli("eval", ckpt, "--device", "cpu")
    return expect_error(res, "names code to import", "--allow-code", harm=harm_if(marker))


@case("attack", "report: run whose checkpoints say data.kind=torch.hub:load", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    marker = payload(os.path.join(tmp, "evil"))
    rewrite_run_checkpoints(run, data__kind="torch.hub:load", data__root=os.path.join(tmp, "evil"),
                            data__options={"source": "local"})
    with no_allow_code():
        res = cli("report", run, "--samples", "1")
    return expect_error(res, "names code to import", harm=harm_if(marker))


@case("attack", "predict (subprocess, cwd holds mymod.py): checkpoint model.name=mymod:build", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    work = os.path.join(tmp, "work")
    marker = payload(work, "mymod")
    rewrite_run_checkpoints(run, model__name="mymod:build")
    save_image(os.path.join(work, "images", "a.png"), scene(0)[0])
    res = cli_subprocess("predict", run, "images", "out", "--device", "cpu", cwd=work)
    return expect_error(res, "names code to import", "mymod:build", harm=harm_if(marker))


@case("attack", "export: checkpoint model.name=payload_mod:build", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    marker = payload(os.path.join(tmp, "evil"))
    rewrite_run_checkpoints(run, model__name="payload_mod:build")
    with no_allow_code(), on_path(os.path.join(tmp, "evil")):
        res = cli("export", run, "--out", os.path.join(tmp, "m.onnx"))
    return expect_error(res, "names code to import", harm=harm_if(marker))


@case("attack", "train --resume: run config.yaml method.name=payload_mod:Method", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    marker = payload(os.path.join(tmp, "evil"))
    path = os.path.join(run, "config.yaml")
    text = open(path).read().replace("name: supervised", "name: payload_mod:Method")
    open(path, "w").write(text)
    with no_allow_code(), on_path(os.path.join(tmp, "evil")):
        res = cli("train", "--no-progress", "--resume", run, "train.iterations=3")
    return expect_error(res, "config.yaml names code to import", harm=harm_if(marker))


@case("attack", "eval: last.pt is a pickle that runs os.system", "error", fast=True)
def _(tmp):
    marker = os.path.join(tmp, "PWNED")
    path = evil_pickle(os.path.join(tmp, "last.pt"), marker)
    res = cli("eval", path, "--device", "cpu")
    return expect_error(res, "refused", harm=harm_if(marker))


@case("attack", "train: model.weights is a pickle that runs os.system", "error", fast=True)
def _(tmp):
    marker = os.path.join(tmp, "PWNED")
    path = evil_pickle(os.path.join(tmp, "w.pth"), marker)
    res = cli("train", "--no-progress", *BASE, f"model.weights={path}", f"output_dir={tmp}/runs")
    return expect_error(res, "weights_only", harm=harm_if(marker))


@case("attack", "train: model.pretrained_backbone is a pickle that runs os.system", "error", fast=True)
def _(tmp):
    marker = os.path.join(tmp, "PWNED")
    path = evil_pickle(os.path.join(tmp, "b.pth"), marker)
    res = cli("train", "--no-progress", *[o for o in BASE if "pretrained_backbone" not in o],
              f"model.pretrained_backbone={path}", f"output_dir={tmp}/runs")
    return expect_error(res, "weights_only", harm=harm_if(marker))


@case("attack", "eval --config RECIPE: weights file is a pickle that runs os.system", "error", fast=True)
def _(tmp):
    marker = os.path.join(tmp, "PWNED")
    path = evil_pickle(os.path.join(tmp, "released.pth"), marker)
    recipe = os.path.join(tmp, "r.yaml")
    open(recipe, "w").write("model: {name: deeplabv3plus_mobilenetv2, pretrained_backbone: false}\n"
                            "data: {kind: synthetic, options: {size: 32, length: 4}}\n")
    res = cli("eval", path, "--config", recipe, "--device", "cpu")
    return expect_error(res, "weights_only", harm=harm_if(marker))


@case("attack", "eval --allow-code: the user's opt-in runs the named module", "works", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    marker = payload(os.path.join(tmp, "evil"))
    rewrite_run_checkpoints(run, model__name="payload_mod:build")
    with no_allow_code(), on_path(os.path.join(tmp, "evil")):
        res = cli("eval", run, "--device", "cpu", "--allow-code")
    if os.path.exists(marker):  # the module ran, as asked (its build() then stops the command)
        return "worked", "module imported with --allow-code"
    return expect_works(res, "the module did not run")


# ---------------------------------------------------------------------------------------------------
# 2. run folders


@case("run folder", "train name=.. --overwrite (parent holds config.yaml and src/)", "error", fast=True)
def _(tmp):
    p = os.path.join(tmp, "p")
    os.makedirs(os.path.join(p, "src"))
    os.makedirs(os.path.join(p, "runs"))
    open(os.path.join(p, "config.yaml"), "w").write("x: 1\n")
    open(os.path.join(p, "src", "main.py"), "w").write("code\n")
    res = cli("train", "--no-progress", *BASE, f"output_dir={p}/runs", "name=..", "--overwrite")
    harm = None if os.path.exists(os.path.join(p, "src", "main.py")) else "p/src was deleted"
    return expect_error(res, "does not name a folder inside output_dir", harm=harm)


@case("run folder", "train name=../../x writes outside output_dir", "error", fast=True)
def _(tmp):
    res = cli("train", "--no-progress", *BASE, f"output_dir={tmp}/a/runs", "name=../../x")
    harm = "wrote tmp/x" if os.path.exists(os.path.join(tmp, "x")) else None
    return expect_error(res, "does not name a folder inside output_dir", harm=harm)


@case("run folder", "train name=/absolute/path", "error", fast=True)
def _(tmp):
    res = cli("train", "--no-progress", *BASE, f"output_dir={tmp}/runs", f"name={tmp}/abs")
    harm = "wrote the absolute path" if os.path.exists(os.path.join(tmp, "abs")) else None
    return expect_error(res, "does not name a folder inside output_dir", harm=harm)


@case("run folder", "--overwrite a folder with config.yaml but no marker (not made by semiseg)", "error", fast=True)
def _(tmp):
    folder = os.path.join(tmp, "runs", "r")
    os.makedirs(folder)
    open(os.path.join(folder, "config.yaml"), "w").write("x: 1\n")
    open(os.path.join(folder, "thesis.tex"), "w").write("mine\n")
    res = cli("train", "--no-progress", *BASE, f"output_dir={tmp}/runs", "name=r", "--overwrite")
    harm = None if sorted(os.listdir(folder)) == ["config.yaml", "thesis.tex"] else "the folder was changed"
    return expect_error(res, "not created by semiseg", harm=harm)


@case("run folder", "--overwrite a real run holding the user's notes.txt", "works", needs_run=True)
def _(tmp):
    run = copy_run(tmp, "r")
    open(os.path.join(run, "notes.txt"), "w").write("mine\n")
    res = cli("train", "--no-progress", *BASE, f"output_dir={tmp}/runs", "name=r", "--overwrite")
    problem = None if os.path.exists(os.path.join(run, "notes.txt")) else "notes.txt was deleted"
    return expect_works(res, problem)


@case("run folder", "train into an existing non-empty folder without --overwrite", "error", fast=True)
def _(tmp):
    folder = os.path.join(tmp, "mine")
    os.makedirs(folder)
    open(os.path.join(folder, "a.txt"), "w").write("x")
    res = cli("train", "--no-progress", *BASE, "--run-dir", folder)
    return expect_error(res, "already exists")


@case("run folder", "--run-dir is a file", "error", fast=True)
def _(tmp):
    path = os.path.join(tmp, "file")
    open(path, "w").write("x")
    res = cli("train", "--no-progress", *BASE, "--run-dir", path)
    return expect_error(res, "is a file")


@case("run folder", "second train on a new run folder while the first holds it", "error", fast=True)
def _(tmp):
    from semiseg.engine.run_dir import RunLock

    folder = os.path.join(tmp, "runs", "r")
    os.makedirs(folder)
    lock = RunLock(folder).acquire()
    try:
        res = cli("train", "--no-progress", *BASE, f"output_dir={tmp}/runs", "name=r")
    finally:
        lock.release()
    return expect_error(res, "in use by another semiseg training process", f"PID {os.getpid()}")


@case("run folder", "--resume while the run is still training", "error", needs_run=True)
def _(tmp):
    from semiseg.engine.run_dir import RunLock

    run = copy_run(tmp)
    lock = RunLock(run).acquire()
    try:
        res = cli("train", "--no-progress", "--resume", run)
    finally:
        lock.release()
    return expect_error(res, "in use by another semiseg training process", f"PID {os.getpid()}")


@case("run folder", "--resume a folder without last.pt", "error", fast=True)
def _(tmp):
    folder = os.path.join(tmp, "runs", "r")
    os.makedirs(folder)
    open(os.path.join(folder, "config.yaml"), "w").write("name: r\n")
    res = cli("train", "--no-progress", "--resume", folder)
    return expect_error(res, "nothing to resume")


# ---------------------------------------------------------------------------------------------------
# 3. resume


@case("resume", "--resume optim.lr=0.5 optim.weight_decay=0.3 is applied", "works", needs_run=True)
def _(tmp):
    import torch

    run = copy_run(tmp)
    res = cli("train", "--no-progress", "--resume", run, "train.iterations=3", "optim.lr=0.5", "optim.weight_decay=0.3")
    problem = None
    if res.code == 0:
        ckpt = torch.load(os.path.join(run, "last.pt"), weights_only=True)
        groups = ckpt["optimizers"]["model"]["param_groups"]
        if any(g["weight_decay"] != 0.3 for g in groups) or ckpt["schedulers"]["model"]["base_lrs"][0] != 0.5:
            problem = "the optimizer kept the old lr / weight decay"
    return expect_works(res, problem)


@case("resume", "--resume optim.name=adamw (saved state is SGD's)", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    return expect_error(cli("train", "--no-progress", "--resume", run, "train.iterations=3", "optim.name=adamw"),
                        "--resume cannot change optim.name")


@case("resume", "--resume data.labeled.fraction=0.5 (split.txt decides)", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    return expect_error(cli("train", "--no-progress", "--resume", run, "train.iterations=3",
                            "data.labeled.fraction=0.5"), "--resume cannot change data.labeled")


@case("resume", "--resume train.iterations below the checkpoint's iteration", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    return expect_error(cli("train", "--no-progress", "--resume", run, "train.iterations=1"), "raise train.iterations")


# ---------------------------------------------------------------------------------------------------
# 4. divergence


@case("divergence", "optim.lr=1e6: stop names a last checkpoint with finite weights", "error")
def _(tmp):
    import torch

    from semiseg.engine.checkpoint import nonfinite_tensors

    res = cli("train", "--no-progress", *BASE, "optim.lr=1e6", "train.iterations=20", f"output_dir={tmp}/runs",
              "name=r")
    harm = None
    for name in ("last.pt", "best.pt"):
        path = os.path.join(tmp, "runs", "r", name)
        if os.path.exists(path) and nonfinite_tensors(torch.load(path, weights_only=True)["model"]):
            harm = f"{name} holds NaN/inf"
    return expect_error(res, "training diverged", "nothing was saved", harm=harm)


@case("divergence", "eval a checkpoint whose running_var holds inf", "error", needs_run=True)
def _(tmp):
    import torch

    run = copy_run(tmp)
    for name in ("last.pt", "best.pt"):
        path = os.path.join(run, name)
        if os.path.exists(path):
            ckpt = torch.load(path, weights_only=True)
            key = next(k for k in ckpt["model"] if k.endswith("running_var"))
            ckpt["model"][key].fill_(float("inf"))
            torch.save(ckpt, path)
    return expect_error(cli("eval", run, "--device", "cpu"), "non-finite")


@case("divergence", "--resume a last.pt holding NaN weights", "error", needs_run=True)
def _(tmp):
    import torch

    run = copy_run(tmp)
    path = os.path.join(run, "last.pt")
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key].fill_(float("nan"))
    torch.save(ckpt, path)
    return expect_error(cli("train", "--no-progress", "--resume", run, "train.iterations=3"), "non-finite")


# ---------------------------------------------------------------------------------------------------
# 7. config values and names


def _config_case(name: str, override: str, mention: str) -> None:
    @case("config", name, "error", fast=True)
    def _(tmp):
        res = cli("train", "--no-progress", *BASE, override, f"output_dir={tmp}/runs")
        harm = "created a run folder" if os.path.exists(os.path.join(tmp, "runs")) else None
        return expect_error(res, mention, harm=harm)


for _name, _override, _mention in [
    ("optim.lr=nan", "optim.lr=nan", "optim.lr"),
    ("optim.lr=-1", "optim.lr=-1", "optim.lr"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.momentum=5", "optim.momentum=5", "optim.momentum"),
    ("optim.grad_clip=0", "optim.grad_clip=0", "optim.grad_clip"),
    ("unknown model name (model.name=deeplabv3_resnet50)", "model.name=deeplabv3_resnet50", "available"),
    ("unknown loss name (loss.name=focal)", "loss.name=focal", "available"),
    ("unknown method name (method.name=mean_teacher)", "method.name=mean_teacher", "available"),
    ("unknown dataset kind (data.kind=mapillary)", "data.kind=mapillary", "available"),
    ("loss.ohem_thresh=1.5", "loss.ohem_thresh=1.5", "loss.ohem_thresh"),
    ("misspelt key (optim.lrr=0.1)", "optim.lrr=0.1", "valid keys"),
    ("data.crop_size=[0,32]", "data.crop_size=[0,32]", "data.crop_size"),
    ("data.batch_size=0", "data.batch_size=0", "data.batch_size"),
    ("train.iterations=0", "train.iterations=0", "train.iterations"),
    ("override without '=' (optim.lr 0.1)", "optim.lr", "key=value"),
    ("optim.lr=abc (not a number)", "optim.lr=abc", "optim.lr"),
]:
    _config_case(_name, _override, _mention)


@case("config", "recipe file is binary garbage", "error", fast=True)
def _(tmp):
    path = os.path.join(tmp, "r.yaml")
    open(path, "wb").write(bytes(range(256)) * 4)
    return expect_error(cli("train", "--no-progress", "--config", path), "r.yaml")


@case("config", "recipe file does not exist", "error", fast=True)
def _(tmp):
    return expect_error(cli("train", "--no-progress", "--config", os.path.join(tmp, "missing.yaml")), "not found")


@case("config", "recipe is a YAML list, not a mapping", "error", fast=True)
def _(tmp):
    path = os.path.join(tmp, "r.yaml")
    open(path, "w").write("- a\n- b\n")
    return expect_error(cli("train", "--no-progress", "--config", path), "mapping")


@case("config", "recipe _base_ chain loops", "error", fast=True)
def _(tmp):
    open(os.path.join(tmp, "a.yaml"), "w").write("_base_: b.yaml\n")
    open(os.path.join(tmp, "b.yaml"), "w").write("_base_: a.yaml\n")
    return expect_error(cli("train", "--no-progress", "--config", os.path.join(tmp, "a.yaml")), "loops")


@case("config", "batch size 1 with BatchNorm", "error")
def _(tmp):
    res = cli("train", "--no-progress", *BASE, "data.batch_size=1", f"output_dir={tmp}/runs")
    return expect_error(res, "batch")


# ---------------------------------------------------------------------------------------------------
# 7. checkpoint files


@case("checkpoint", "--resume with last.pt truncated to half (best.pt intact)", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    path = os.path.join(run, "last.pt")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return expect_error(cli("train", "--no-progress", "--resume", run, "train.iterations=3"), "truncated", "best.pt")


@case("checkpoint", "eval an empty .pt file", "error", fast=True)
def _(tmp):
    path = os.path.join(tmp, "last.pt")
    open(path, "wb").close()
    return expect_error(cli("eval", path, "--device", "cpu"), "empty")


@case("checkpoint", "eval a text file named .pt", "error", fast=True)
def _(tmp):
    path = os.path.join(tmp, "model.pt")
    open(path, "w").write("hello\n")
    return expect_error(cli("eval", path, "--device", "cpu"), "not a PyTorch file")


@case("checkpoint", "eval a plain state dict (not a semiseg checkpoint)", "error", fast=True)
def _(tmp):
    import torch

    path = os.path.join(tmp, "plain.pt")
    torch.save({"conv.weight": torch.zeros(1)}, path)
    return expect_error(cli("eval", path, "--device", "cpu"), "model.weights")


@case("checkpoint", "eval a checkpoint this user may not read (permission denied)", "error", needs_run=True)
def _(tmp):
    import torch

    run = copy_run(tmp)
    path = os.path.join(run, "best.pt") if os.path.exists(os.path.join(run, "best.pt")) else os.path.join(run, "last.pt")
    if os.geteuid() != 0:
        os.chmod(path, 0)
        res = cli("eval", path, "--device", "cpu")
    else:  # root reads anything: make the open fail as it would for another user
        real = torch.load

        def load(f, *a, **k):
            if os.fspath(f) == path:
                raise PermissionError(13, "Permission denied", path)
            return real(f, *a, **k)

        torch.load = load
        try:
            res = cli("eval", path, "--device", "cpu")
        finally:
            torch.load = real
    got, note = expect_error(res, "permission denied")
    if got == "clear error" and ("corrupt" in res.err or "truncated" in res.err):
        return "unclear error", "calls it corruption"
    return got, note + (" (simulated: root)" if os.geteuid() == 0 else "")


@case("checkpoint", "eval a path that does not exist", "error", fast=True)
def _(tmp):
    return expect_error(cli("eval", os.path.join(tmp, "nope.pt"), "--device", "cpu"), "not found")


@case("checkpoint", "eval a run folder with no checkpoint in it", "error", fast=True)
def _(tmp):
    os.makedirs(os.path.join(tmp, "run"))
    return expect_error(cli("eval", os.path.join(tmp, "run"), "--device", "cpu"), "no checkpoint")


# ---------------------------------------------------------------------------------------------------
# 5 / 7. predict


def _predict(tmp: str, run: str, *names_sizes, extra=()) -> Result:
    images = os.path.join(tmp, "images")
    os.makedirs(images, exist_ok=True)
    for name, size in names_sizes:
        save_image(os.path.join(images, name), scene(len(name), size)[0])
    return cli("predict", run, images, os.path.join(tmp, "out"), "--device", "cpu", *extra)


@case("predict", "folder holds x.jpg and x.png", "works", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    res = _predict(tmp, run, ("x.jpg", 32), ("x.png", 32))
    out = sorted(os.listdir(os.path.join(tmp, "out"))) if os.path.isdir(os.path.join(tmp, "out")) else []
    return expect_works(res, None if len(out) == 2 else f"{len(out)} mask file(s) for 2 images: {out}")


@case("predict", "one unreadable image among good ones", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    images = os.path.join(tmp, "images")
    os.makedirs(images)
    open(os.path.join(images, "b.png"), "wb").write(b"\x89PNG\r\n\x1a\n broken")
    res = _predict(tmp, run, ("a.png", 32), ("c.png", 32))
    out = sorted(os.listdir(os.path.join(tmp, "out"))) if os.path.isdir(os.path.join(tmp, "out")) else []
    harm = None if out == ["a.png", "c.png"] else f"masks written: {out} (the good images should be)"
    return expect_error(res, "b.png", "could not be read", harm=harm)


@case("predict", "empty input folder", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    os.makedirs(os.path.join(tmp, "images"))
    return expect_error(_predict(tmp, run), "no images")


@case("predict", "input folder does not exist", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    return expect_error(cli("predict", run, os.path.join(tmp, "nope"), os.path.join(tmp, "out")), "not found")


@case("predict", "output folder is the input folder", "error", needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    images = os.path.join(tmp, "images")
    save_image(os.path.join(images, "a.png"), scene(0)[0])
    return expect_error(cli("predict", run, images, images, "--device", "cpu"), "output folder is the input folder")


@case("predict", "large image (1000x1000, 977x the crop) in whole mode: hint about --mode slide", "works",
      needs_run=True)
def _(tmp):
    run = copy_run(tmp)
    res = _predict(tmp, run, ("big.png", 1000))
    return expect_works(res, None if "--mode slide" in res.err else "no hint about --mode slide")


@case("predict", "grayscale, RGBA and palette images", "works", needs_run=True)
def _(tmp):
    from PIL import Image

    run = copy_run(tmp)
    images = os.path.join(tmp, "images")
    os.makedirs(images)
    rgb = Image.fromarray(scene(0)[0])
    rgb.convert("L").save(os.path.join(images, "g.png"))
    rgb.convert("RGBA").save(os.path.join(images, "a.png"))
    rgb.convert("P").save(os.path.join(images, "p.png"))
    res = cli("predict", run, images, os.path.join(tmp, "out"), "--device", "cpu")
    out = sorted(os.listdir(os.path.join(tmp, "out"))) if os.path.isdir(os.path.join(tmp, "out")) else []
    return expect_works(res, None if len(out) == 3 else f"masks: {out}")


# ---------------------------------------------------------------------------------------------------
# 5. data mistakes (the data package's; rows show their verdict as it stands)


@case("data", "flat folder (no train/val subfolders): validation = training images", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"), layout="flat")
    return expect_error(train_folder(tmp, root), "val")


@case("data", "data.val_split typo (vall) next to train/ and val/", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"))
    return expect_error(train_folder(tmp, root, "data.val_split=vall"), "vall")


@case("data", "0/255 masks with 3 classes (255 is read as ignore)", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"), mask_fn=lambda m: np.where(m > 0, 255, 0).astype(np.uint8))
    return expect_error(train_folder(tmp, root), "255")


@case("data", "masks saved as JPEG (lossy: values change at edges)", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"), mask_ext=".jpg")
    return expect_error(train_folder(tmp, root), "jpg")


@case("data", "16-bit PNG masks with a value above 255", "error")
def _(tmp):
    from PIL import Image

    root = folder_dataset(os.path.join(tmp, "d"))
    for split in ("train", "val"):
        folder = os.path.join(root, split, "masks")
        for name in os.listdir(folder):
            m = np.array(Image.open(os.path.join(folder, name))).astype(np.uint16)
            m[0, 0] = 258  # would wrap to class 2 in 8 bits
            Image.fromarray(m).save(os.path.join(folder, name))
    return expect_error(train_folder(tmp, root), "258")


@case("data", "image with EXIF orientation (rotated on display), mask drawn on the displayed image", "works")
def _(tmp):
    from PIL import Image

    from semiseg.data import build_dataset

    root = os.path.join(tmp, "d")
    image, mask = scene(0, 32)
    image = image.copy()
    image[:8, :, :] = 255  # a white top band in the displayed picture
    stored = Image.fromarray(np.rot90(image, 1).copy())  # stored rotated; orientation 6 turns it back on display
    exif = stored.getexif()
    exif[0x0112] = 6
    os.makedirs(os.path.join(root, "images"))
    stored.save(os.path.join(root, "images", "a.jpg"), exif=exif, quality=100)
    save_image(os.path.join(root, "masks", "a.png"), mask)
    try:
        img, _ = build_dataset("folder", root, "train", classes=["a", "b", "c"]).read(0)
    except Exception as e:
        return ("clear error" if "exif" in str(e).lower() or "orientation" in str(e).lower() else "unclear error"), str(e)[:100]
    upright = img[:8].mean() > 200 and img[-8:].mean() < 200
    return ("worked", "") if upright else ("silent", "image read without its EXIF rotation: mask misaligned")


@case("data", "duplicate class names (classes: [a, b, a])", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"))
    return expect_error(train_folder(tmp, root, classes="[a, b, a]"), "more than once")


@case("data", "a corrupt training image the sampler reaches late", "error")
def _(tmp):
    from semiseg.engine.logger import read_metrics

    root = folder_dataset(os.path.join(tmp, "d"), n=8)
    victim = sorted(os.listdir(os.path.join(root, "train", "images")))[-1]
    open(os.path.join(root, "train", "images", victim), "wb").write(b"\x89PNG\r\n\x1a\n broken")
    res = train_folder(tmp, root, "train.iterations=8", "train.log_interval=1")
    got, note = expect_error(res, victim)
    run = os.path.join(tmp, "runs", "r")
    steps = [e for e in read_metrics(run) if e["kind"] == "train"] if os.path.exists(os.path.join(run, "metrics.jsonl")) else []
    if got == "clear error" and steps:
        return "unclear error", f"found after {len(steps)} training step(s), not before training"
    return got, note


@case("data", "mask value outside the classes (7 with 3 classes)", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"), mask_fn=lambda m: np.where(m == 2, 7, m).astype(np.uint8))
    return expect_error(train_folder(tmp, root), "7")


@case("data", "mask and image sizes differ", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"), mask_fn=lambda m: m[:30, :30].copy())
    return expect_error(train_folder(tmp, root), "size")


@case("data", "RGB colour masks without a palette", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"),
                          mask_fn=lambda m: np.stack([m * 100, m * 50, m * 10], -1).astype(np.uint8))
    return expect_error(train_folder(tmp, root), "palette")


@case("data", "an image without a mask", "error")
def _(tmp):
    root = folder_dataset(os.path.join(tmp, "d"))
    save_image(os.path.join(root, "train", "images", "extra.png"), scene(99)[0])
    return expect_error(train_folder(tmp, root), "extra")


@case("data", "data.root does not exist", "error", fast=True)
def _(tmp):
    return expect_error(train_folder(tmp, os.path.join(tmp, "nope")), "does not exist")


# ---------------------------------------------------------------------------------------------------


def run_cases(cases: list[Case], root: str, *, progress: bool = True) -> list[dict]:
    Shared.root, Shared.run = root, ""
    rows = []
    for i, c in enumerate(cases, 1):
        tmp = os.path.join(root, f"case{i:02d}")
        os.makedirs(tmp)
        start = time.perf_counter()
        try:
            got, note = c.run(tmp)
        except Exception:  # the row's own set-up failed: report it rather than stop the table
            got, note = "harness error", traceback.format_exc().strip().splitlines()[-1][:100]
        ok = (c.expected == "error" and got == "clear error") or (c.expected == "works" and got == "worked")
        row = {"area": c.area, "case": c.name, "expected": c.expected, "got": got, "verdict": "OK" if ok else "FAIL",
               "note": note, "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        if progress:
            print(f"[{i}/{len(cases)}] {row['verdict']:4} {c.area}: {c.name} -> {got}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[dict], markdown: bool = False) -> str:
    cols = ["#", "area", "case", "expected", "got", "verdict", "note"]
    data = [[str(i), r["area"], r["case"], r["expected"], r["got"], r["verdict"], r["note"]] for i, r in enumerate(rows, 1)]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in data]
        return "\n".join(lines)
    widths = [min(max(len(row[k]) for row in data + [cols]), 70 if k == 2 else 200) for k in range(len(cols))]
    fmt = lambda row: "  ".join(x[:w].ljust(w) for x, w in zip(row, widths)).rstrip()
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in data])


def summary(rows: list[dict]) -> str:
    from collections import Counter

    got = Counter(r["got"] for r in rows)
    verdict = Counter(r["verdict"] for r in rows)
    return (f"{len(rows)} cases: " + ", ".join(f"{n} {k}" for k, n in got.most_common())
            + f"; verdict: {verdict.get('OK', 0)} OK, {verdict.get('FAIL', 0)} FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="rows whose area or case contains this text")
    parser.add_argument("--fast", action="store_true", help="only the rows that need no training (seconds)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    cases = [c for c in CASES if (not args.only or args.only.lower() in f"{c.area} {c.name}".lower())
             and (not args.fast or c.fast)]
    root = tempfile.mkdtemp(prefix="semiseg-hostile-")
    try:
        rows = run_cases(cases, root)
    finally:
        if args.keep:
            print(f"inputs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(format_table(rows, args.markdown))
    print()
    print(summary(rows))
    return 0 if all(r["verdict"] == "OK" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
