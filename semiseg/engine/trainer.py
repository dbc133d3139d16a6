"""The training loop every method uses.

The loop owns the device, precision, DDP, the data streams, optimizer steps and schedules, gradient
accumulation, the NaN check, checkpoints, logs and evaluation; the method (engine/methods/) owns its
training step. Read :meth:`Trainer.fit` top to bottom for the order of events in one iteration.

Iterations count optimizer steps. ``data.batch_size`` images go into each step: every one of the W
processes loads ``batch_size / (W * accum_steps)`` images per micro-step.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from semiseg import __version__
from semiseg.config import Config, ConfigError, config_to_dict, dump_config
from semiseg.data.info import DatasetInfo
from semiseg.engine import build, distributed as dist, preflight
from semiseg.engine.checkpoint import (BEST, FORMAT, LAST, CheckpointError, atomic_save, capture_rng_state, describe_names,
                                      load_checkpoint, nonfinite_tensors, restore_rng_state)
from semiseg.engine.context import TrainContext
from semiseg.engine.evaluate import evaluate, inference_options, make_eval_loader
from semiseg.engine.logger import MetricsLog
from semiseg.engine.methods import build_method
from semiseg.runtime import make_grad_scaler, resolve_channels_last, resolve_device, resolve_precision
from semiseg.engine.run_dir import CONFIG, SPLIT, RunDirError, RunLock, prepare_run_dir, remove_if_unused
from semiseg.engine.threads import ThreadTuner


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the weights of that step were not applied and nothing was saved."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# Keys a resume cannot change: the restored state was made with them (the weights, the labeled split in split.txt,
# the optimizer's state tensors, the random streams). A change would be written to config.yaml without taking
# effect, so it is refused. Everything else a resume honours: train.iterations and the optim.* numbers (the schedule,
# and the restored optimizers' hyperparameters, are rebuilt from the resumed config).
RESUME_FIXED = ("model.name", "model.options", "model.pretrained_backbone", "model.weights", "model.weights_mode",
                "data.train_split", "data.labeled", "optim.name", "method.name", "train.seed")
# Optimizer-group entries the checkpoint restores but the config decides (the lr is the schedule's business).
_NOT_HYPERPARAMETERS = ("params", "lr", "initial_lr")


_MISSING = object()


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, _MISSING) if isinstance(d, dict) else _MISSING
    return d


def check_resume_changes(saved: dict, cfg: Config) -> None:
    """Refuse ``--resume`` overrides of :data:`RESUME_FIXED` keys (``saved``: the checkpoint's config; a key it
    lacks, from an older semiseg, is not compared)."""
    now = config_to_dict(cfg)
    changed = [f"{k}: {_lookup(saved, k)!r} -> {_lookup(now, k)!r}" for k in RESUME_FIXED
               if _lookup(saved, k) is not _MISSING and _lookup(saved, k) != _lookup(now, k)]
    if changed:
        raise ConfigError(
            "--resume cannot change " + "; ".join(changed) + ": the saved weights, split, optimizer state and random "
            "streams were made with the old value, so the new one would be recorded without being used. Resume "
            "without it, or start a new run with it (name=NEW_NAME, model.weights=RUN/last.pt to start from "
            "these weights)"
        )


def saved_mode(ckpt: dict[str, Any] | None) -> tuple[str, bool] | None:
    """The (precision, channels_last) a checkpoint was trained in; None for a fresh run or an older checkpoint."""
    mode = (ckpt or {}).get("precision")
    if isinstance(mode, dict) and isinstance(mode.get("precision"), str) and isinstance(mode.get("channels_last"), bool):
        return mode["precision"], mode["channels_last"]
    return None


class Trainer:
    """Builds a run from a config and trains it: ``Trainer(cfg, run_dir).fit()``.

    ``resume=True`` continues the run in ``run_dir`` from its ``last.pt`` (model, optimizers, schedules,
    grad scaler, method state, data stream positions, RNG states, best metric); ``overwrite=True`` replaces
    an existing run folder. Without either, an existing non-empty folder is refused.
    """

    def __init__(self, cfg: Config, run_dir: str, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True):
        self.cfg = cfg
        t = cfg.train
        self.device = dist.init_distributed(resolve_device(t.device))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.progress = progress

        # Rank 0 decides about the folder; the others learn the outcome so that no rank waits forever.
        # Rank 0 holds the folder's lock (.semiseg.lock) while it trains: a second train or resume of the same
        # folder is refused with the holder's PID; the OS drops the lock when this process ends, however it ends.
        error = None
        created = not os.path.exists(run_dir)
        self._lock = RunLock(run_dir) if self.is_main else None
        if self.is_main:
            try:
                run_dir = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, lock=self._lock)
            except RunDirError as e:
                error = str(e)
        error, run_dir = dist.broadcast_object((error, os.path.abspath(run_dir)))
        if error:
            raise RunDirError(error)
        self.run_dir = run_dir
        try:
            self._build(load_checkpoint(os.path.join(run_dir, LAST)) if resume else None)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            # A fresh run that failed to start leaves no empty folder behind to trip the next attempt.
            if self.is_main and not resume:
                remove_if_unused(run_dir, created=created)
            raise

    def _build(self, ckpt: dict[str, Any] | None) -> None:
        """Everything between the run folder and the first step, one named step after another (the order matters:
        the random streams, rank 0's measured choices and the files written last depend on it)."""
        self._check_config(ckpt)
        self._set_up_runtime()
        train_set, val_set = self._build_datasets()
        model = self._build_model(train_set, val_set, pretrained=ckpt is None)
        split, labeled, unlabeled = self._build_split(train_set, ckpt)
        model = self._place_model(model, previous=saved_mode(ckpt))
        train_model = self._build_optimizer(model)
        self._build_method(train_model, labeled, unlabeled)
        self._build_validation(val_set)
        self._restore_or_start(ckpt, split)

    def _check_config(self, ckpt: dict[str, Any] | None) -> None:
        """Names and options the recipe gives, the keys a resume may not change, the batch split over processes."""
        cfg, t = self.cfg, self.cfg.train
        preflight.check_config(cfg)  # before anything is built
        if ckpt is not None:
            check_resume_changes(ckpt.get("config") or {}, cfg)
        self.micro_steps = micro = t.accum_steps * self.world_size
        if cfg.data.batch_size % micro:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} cannot be split into {self.world_size} process(es) x "
                f"{t.accum_steps} accumulation step(s); make it a multiple of {micro}"
            )
        self.per_rank_batch = cfg.data.batch_size // micro

    def _set_up_runtime(self) -> None:
        """Precision and layout checked, threads, determinism, the seed (the same on every rank)."""
        t = self.cfg.train
        # checked on every rank now (a bad value must not leave the other ranks waiting for rank 0's choice);
        # "auto" is decided once the model exists (_place_model)
        resolve_precision(t.precision, self.device)
        resolve_channels_last(t.channels_last, self.device)
        self.tuner = None
        if t.threads:
            torch.set_num_threads(t.threads)
        elif self.device.type == "cpu" and self.world_size == 1:
            self.tuner = ThreadTuner()  # measured choice between 1 thread and all cores, see threads.py
        # (under torchrun, torchrun's OMP_NUM_THREADS=1 per process stands unless train.threads is set)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(t.seed)  # same on every rank: identical initial weights

    def _build_datasets(self):
        """The training and validation datasets, their files checked (preflight) before the model is built."""
        cfg = self.cfg
        train_set = build.build_dataset(cfg, cfg.data.train_split)
        val_set = build.build_dataset(cfg, cfg.data.val_split, validation=True)
        # the dataset's facts, read once; the normalisation is filled in when the model is known (_build_model)
        self.dataset_info = DatasetInfo.of(train_set)
        self.num_classes, self.ignore_index = self.dataset_info.num_classes, self.dataset_info.ignore_index
        self._preflight_data(train_set, val_set)
        return train_set, val_set

    def _build_model(self, train_set, val_set, *, pretrained: bool) -> nn.Module:
        """The model (pretrained weights only for a fresh run: a resume loads its own), its input normalisation
        and the transforms that follow from it."""
        cfg, t = self.cfg, self.cfg.train
        model = build.build_model(cfg, self.num_classes, pretrained=pretrained, verbose=self.is_main)
        need = int(getattr(model, "min_train_batch", 1))
        if self.per_rank_batch < need:
            raise ConfigError(
                f"{cfg.model.name} needs at least {need} images per training forward pass ({type(model).__name__}."
                f"min_train_batch, e.g. a BatchNorm on 1x1 pooled features), but data.batch_size={cfg.data.batch_size} "
                f"over {self.world_size} process(es) x train.accum_steps={t.accum_steps} gives {self.per_rank_batch}; "
                f"set data.batch_size to at least {need * self.micro_steps}")
        self.normalization = normalization = build.model_normalization(cfg, model)
        self.dataset_info.normalization = normalization
        train_set.transform = build.train_transform(cfg, normalization, self.ignore_index)
        val_set.transform = build.eval_transform(normalization)
        return model

    def _build_split(self, train_set, ckpt: dict[str, Any] | None):
        """The labeled / unlabeled split (a resume reads its split.txt) and the two subsets of the training set."""
        names = list(train_set.names)
        split = build.make_or_load_split(self.cfg, names, os.path.join(self.run_dir, SPLIT) if ckpt else None)
        labeled_idx, unlabeled_idx = split.indices(names)
        labeled = Subset(train_set, labeled_idx)
        unlabeled = Subset(train_set, unlabeled_idx) if unlabeled_idx else None
        return split, labeled, unlabeled

    def _place_model(self, model: nn.Module, previous: tuple[str, bool] | None = None) -> nn.Module:
        """SyncBatchNorm under DDP, the precision and memory format ("auto": measured by rank 0; a resumed run keeps
        its ``previous`` mode where it is about as fast), the device."""
        cfg = self.cfg
        if cfg.model.sync_bn and self.world_size > 1:
            if self.device.type != "cuda":
                raise ConfigError("model.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                                  "on CPU set model.sync_bn=false: each process then normalises its own batch")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # "auto": rank 0 times this model's training step in each mode (or finds it in the cache), every rank
        # runs what it chose. The in-training evaluations use the same choice: switching the layout of the
        # weights the optimizer holds for a few evaluations is not worth it (semiseg eval measures its own).
        choice = None
        if self.is_main:
            choice = build.precision_choice(cfg, model, self.num_classes, self.device, task="train",
                                            batch=min(2, self.per_rank_batch), previous=previous)
            print(choice.line, flush=True)
        self.precision_choice = choice = dist.broadcast_object(choice)
        self.precision, self.channels_last = choice.precision, choice.channels_last
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        return model

    def _build_optimizer(self, model: nn.Module) -> nn.Module:
        """The model's optimizer (param groups with their lr_mult), then the DDP / compiled wrapper it trains through."""
        t = self.cfg.train
        self.optimizer = build.build_optimizer(self.cfg, model)
        train_model: nn.Module = model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if t.compile:
            train_model = torch.compile(train_model)
        if self.rank > 0:
            seed_everything(t.seed + self.rank)  # different dropout per process from here on
        return train_model

    def _build_method(self, train_model: nn.Module, labeled: Subset, unlabeled: Subset | None) -> None:
        """The loss, the TrainContext with the model's optimizer and poly schedule and the batch streams, and the
        method, which registers its own modules, optimizers and streams on it."""
        cfg, o = self.cfg, self.cfg.optim
        criterion = build.build_criterion(cfg, self.num_classes, self.ignore_index).to(self.device)
        ctx = TrainContext(cfg=cfg, model=train_model, raw_model=self.model, criterion=criterion, device=self.device,
                           precision=self.precision, channels_last=self.channels_last,
                           scaler=make_grad_scaler(self.precision, self.device), rank=self.rank,
                           world_size=self.world_size, per_rank_batch=self.per_rank_batch, num_classes=self.num_classes,
                           ignore_index=self.ignore_index, normalization=self.normalization, labeled_dataset=labeled,
                           unlabeled_dataset=unlabeled)
        # optim.min_lr floors the model's schedule only (an lr in the units of optim.lr; see poly_schedule)
        ctx.add_optimizer("model", self.optimizer, scheduler=ctx.poly_scheduler(self.optimizer, min_lr=o.min_lr, base_lr=o.lr))
        ctx.add_stream("labeled", labeled)
        self.method = build_method(cfg.method)
        if self.method.needs_unlabeled:
            if unlabeled is None:
                raise ConfigError(f"method {cfg.method.name!r} needs unlabeled images but every training sample is "
                                  "labeled; set data.labeled.fraction (or count / id_file)")
            ctx.add_stream("unlabeled", unlabeled, batch_size=self.method.unlabeled_batch(self.per_rank_batch))
        self.method.setup(ctx)
        self.ctx = ctx

    def _build_validation(self, val_set) -> None:
        self.val_set = val_set
        self.val_loader = make_eval_loader(val_set, batch_size=self.cfg.eval.batch_size,
                                           num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda")

    def _restore_or_start(self, ckpt: dict[str, Any] | None, split) -> None:
        """The loop's counters, the checkpoint's state on a resume; then the run's files (split.txt, config.yaml)
        and the start / resume event of the log."""
        cfg, t, run_dir = self.cfg, self.cfg.train, self.run_dir
        self.iteration = 0
        self.best = {"miou": None, "iteration": None}
        self.last_eval: dict[str, Any] | None = None
        self.last_cm = None
        self.last_saved: int | None = None
        self.resume_changes: list[str] = []
        if ckpt is not None:
            self._load_state(ckpt)
        if self.is_main:
            if ckpt is None:
                split.save(os.path.join(run_dir, SPLIT))
            dump_config(cfg, os.path.join(run_dir, CONFIG))
        self.log = MetricsLog(run_dir, enabled=self.is_main, tensorboard=t.tensorboard,
                              resume_iteration=self.iteration if ckpt is not None else None)
        resumed = {"changed": self.resume_changes} if ckpt is not None and self.resume_changes else {}
        self.log.log("resume" if ckpt is not None else "start", self.iteration, {
            **resumed, "world_size": self.world_size, "per_rank_batch": self.per_rank_batch, "accum_steps": t.accum_steps,
            "device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
            "precision_reason": self.precision_choice.reason,
            "torch": str(torch.__version__), "threads": torch.get_num_threads()})
        dist.barrier()

    def _preflight_data(self, train_set, val_set) -> None:
        """The data files checked before the model is built (engine/preflight.py); rank 0 reads, all ranks stop."""
        error = None
        if self.is_main:
            try:
                preflight.check_data(self.cfg, train_set, val_set)
            except ValueError as e:  # DataError and ConfigError
                error = e
        error = dist.broadcast_object(error)
        if error is not None:
            raise error

    # ------------------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``train.iterations``; returns the final evaluation and the best checkpoint's record.

        ``stop_at`` ends early after that iteration with a checkpoint (the schedule still spans
        ``train.iterations``): for chunked jobs on time-limited machines, and for testing resume.
        """
        t = self.cfg.train
        stop = t.iterations if stop_at is None else min(stop_at, t.iterations)
        if self._lock is not None:
            self._lock.acquire()  # held since __init__; again when fit() is called a second time
        pbar = None
        if self.is_main and self.progress:
            from tqdm import tqdm

            pbar = tqdm(total=t.iterations, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True)
        window: dict[str, float] = {}
        window_steps, window_start = 0, time.perf_counter()
        try:
            while self.iteration < stop:
                step_start = time.perf_counter()
                losses = self._step()
                if self.tuner is not None:
                    self.tuner.update(time.perf_counter() - step_start)
                self.iteration += 1
                it = self.iteration
                for k, v in losses.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                lr = self.step_lr
                if pbar is not None:
                    pbar.set_postfix({"loss": f"{losses['loss']:.4f}", "lr": f"{lr:.2e}"}, refresh=False)
                    pbar.update(1)
                if it % t.log_interval == 0 or it == t.iterations:
                    elapsed = time.perf_counter() - window_start
                    values = {k: v / window_steps for k, v in window.items()}
                    values["lr"] = lr
                    values["img_per_s"] = window_steps * self.cfg.data.batch_size / max(elapsed, 1e-9)
                    values["threads"] = torch.get_num_threads()
                    self.log.log("train", it, values)
                    if pbar is None and self.is_main:  # --no-progress: plain log lines instead of the bar
                        print(f"iteration {it}/{t.iterations}: loss {values['loss']:.4f}, lr {lr:.2e}, "
                              f"{values['img_per_s']:.1f} img/s", flush=True)
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                final = it == t.iterations
                improved = False
                evaluate = final or (t.eval_interval > 0 and it % t.eval_interval == 0)
                save = final or it == stop or (t.checkpoint_interval > 0 and it % t.checkpoint_interval == 0)
                if evaluate or save:
                    # A finite loss does not make finite weights: BatchNorm statistics or weights can overflow first.
                    # Such a state is neither evaluated (a meaningless mIoU) nor saved (a "good" checkpoint of inf).
                    self._check_finite()
                if evaluate:
                    improved = self._evaluate(pbar)
                if save or improved:
                    self._save(best=improved)
        finally:
            if pbar is not None:
                pbar.close()
            self.log.close()
            if self._lock is not None:
                self._lock.release()
        return {"iteration": self.iteration, "metrics": self.last_eval, "best": dict(self.best),
                "run_dir": self.run_dir}

    def _step(self) -> dict[str, float]:
        """One optimizer step: accumulation micro-steps, NaN check, optimizer/scheduler steps."""
        ctx, it = self.ctx, self.iteration
        # Back to train mode after an evaluation. Extra modules keep the mode their method gives them
        # (an EMA teacher stays in eval mode).
        ctx.raw_model.train()
        sums: dict[str, torch.Tensor] = {}
        for micro in range(ctx.accum_steps):
            batch = next(ctx.streams["labeled"])
            unlabeled = next(ctx.streams["unlabeled"]) if self.method.needs_unlabeled else None
            with dist.no_sync(ctx.ddp_modules, skip=micro < ctx.accum_steps - 1):
                out = self.method.training_step(batch, unlabeled, it)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / ctx.accum_steps
        names = list(sums)
        values = dist.all_reduce_mean(torch.stack([sums[k] for k in names]).to(self.device)).tolist()
        losses = dict(zip(names, values))
        if not all(math.isfinite(v) for v in values):
            raise TrainingDiverged(self._diverged_message(it + 1, losses), it + 1)

        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses, for the log
        ctx.apply_updates()
        return losses

    def _check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` when a weight, buffer or optimizer moment is NaN/inf on any process."""
        ctx = self.ctx
        bad = nonfinite_tensors({"model": self.model.state_dict(),
                                 **{k: m.state_dict() for k, m in ctx.modules.items()},
                                 **{f"optimizer {k}": o.state_dict()["state"] for k, o in ctx.optimizers.items()}})
        flag = dist.all_reduce_mean(torch.tensor([float(bool(bad))], device=self.device)).item()
        if flag > 0:
            what = describe_names(bad) if bad else "the state of another process"
            raise TrainingDiverged(self._diverged_message(
                self.iteration, None, f"the loss was finite but {len(bad) or 'some'} tensor(s) became non-finite "
                f"by iteration {self.iteration} ({what})"), self.iteration)

    def _diverged_message(self, iteration: int, losses: dict[str, float] | None, what: str | None = None) -> str:
        if what is None:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in (losses or {}).items())
            what = f"non-finite loss at iteration {iteration} ({shown}). The update of that iteration was not applied"
        last = os.path.join(self.run_dir, LAST)
        if self.last_saved is not None:
            saved = f"the last good checkpoint is {last} (iteration {self.last_saved}), unchanged, with finite weights"
        elif os.path.isfile(last):
            saved = f"{last} is from before this process started, unchanged"
        else:
            saved = f"no checkpoint was written yet (train.checkpoint_interval={self.cfg.train.checkpoint_interval})"
        return (f"training diverged: {what}; nothing was saved; {saved}. Try a lower optim.lr, "
                "optim.grad_clip=10, train.precision=fp32, or check the data; then `semiseg train --resume "
                f"{self.run_dir}` with the change as key=value.")

    # ------------------------------------------------------------------------------------------------
    def _evaluate(self, pbar=None) -> bool:
        """Evaluate on the validation split (the code of `semiseg eval`); True when mIoU improved."""
        from semiseg.metrics import to_json_dict

        cm = evaluate(self.model, self.val_loader, self.num_classes, device=self.device, precision=self.precision,
                      channels_last=self.channels_last, ignore_index=self.ignore_index,
                      inference=inference_options(self.cfg))
        metrics = to_json_dict(cm.compute())
        self.last_cm, self.last_eval = cm, metrics
        self.log.log("eval", self.iteration, {"split": self.cfg.data.val_split, **metrics})
        miou = metrics["miou"]
        improved = miou is not None and (self.best["miou"] is None or miou > self.best["miou"])
        if improved:
            self.best = {"miou": miou, "iteration": self.iteration}
        if self.is_main:
            best = self.best["miou"]
            text = f"iteration {self.iteration}: {self.cfg.data.val_split} mIoU "
            text += "undefined (no labelled pixel)" if miou is None else f"{100 * miou:.2f}"
            if best is not None:
                text += f" (best {100 * best:.2f} at iteration {self.best['iteration']})"
            if pbar is not None:
                pbar.write(text)
            else:  # without a progress bar (--no-progress, logs to a file) the evaluations still show
                print(text, flush=True)
        return improved

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        ctx = self.ctx
        return {
            "format": FORMAT,
            "semiseg_version": __version__,
            "torch_version": str(torch.__version__),
            "iteration": self.iteration,
            "config": config_to_dict(self.cfg),
            "dataset": self.dataset_info.to_dict(),
            "model": self.model.state_dict(),
            "modules": {k: m.state_dict() for k, m in ctx.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in ctx.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in ctx.schedulers.items()},
            "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
            "method": self.method.state_dict(),
            "streams": {k: s.state_dict() for k, s in ctx.streams.items()},
            # one RNG state per process (a collective: every rank calls state_dict)
            "rng": dist.all_gather_object(capture_rng_state()),
            "world_size": self.world_size,
            "best": dict(self.best),
            "metrics": self.last_eval,
            "precision": {"precision": self.precision, "channels_last": self.channels_last},
        }

    def _save(self, best: bool) -> None:
        state = self.state_dict()
        if self.is_main:
            atomic_save(state, os.path.join(self.run_dir, LAST))
            if best:
                atomic_save(state, os.path.join(self.run_dir, BEST))
        self.last_saved = self.iteration
        dist.barrier()

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        ctx = self.ctx
        bad = nonfinite_tensors({"model": ckpt["model"], **(ckpt.get("modules") or {})})
        if bad:
            raise CheckpointError(
                f"cannot resume {os.path.join(self.run_dir, LAST)}: it holds non-finite values in {len(bad)} tensor(s) "
                f"({describe_names(bad)}), saved after the run had diverged (semiseg now checks before saving). "
                "Resume from an earlier checkpoint (e.g. copy best.pt over last.pt if it is finite) or start again")
        self.model.load_state_dict(ckpt["model"])
        for k, m in ctx.modules.items():
            m.load_state_dict(ckpt["modules"][k])
        # An optimizer's state_dict restores its hyperparameters too (lr, momentum, weight decay...) and a scheduler's
        # its base rates: the values of the saved config. The resumed config decides them instead, so that
        # `--resume RUN optim.lr=...` (what the divergence message advises) trains with what config.yaml records.
        fresh = {k: [{n: v for n, v in g.items() if n not in _NOT_HYPERPARAMETERS} for g in o.param_groups]
                 for k, o in ctx.optimizers.items()}
        fresh_lr = {k: [g["lr"] for g in o.param_groups] for k, o in ctx.optimizers.items()}
        changes: list[str] = []
        for k, o in ctx.optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
            for i, (group, new) in enumerate(zip(o.param_groups, fresh[k])):
                where = f"optimizer {k!r} group {group.get('name', i)!r}"
                changes += [f"{where}: {n} {group.get(n)!r} -> {v!r}" for n, v in new.items() if group.get(n) != v]
                group.update(new)
            if k not in ctx.schedulers:  # a constant rate: the configured one
                for i, (group, lr) in enumerate(zip(o.param_groups, fresh_lr[k])):
                    if group["lr"] != lr:
                        changes.append(f"optimizer {k!r} group {group.get('name', i)!r}: lr {group['lr']!r} -> {lr!r}")
                    group["lr"] = lr
        for k, s in ctx.schedulers.items():
            base_lrs = list(getattr(s, "base_lrs", []))
            s.load_state_dict(ckpt["schedulers"][k])
            if isinstance(s, torch.optim.lr_scheduler.LambdaLR):
                for i, (group, old, new) in enumerate(zip(s.optimizer.param_groups, s.base_lrs, base_lrs)):
                    if old != new:
                        changes.append(f"optimizer {k!r} group {group.get('name', i)!r}: base lr {old!r} -> {new!r}")
                    group["initial_lr"] = new
                s.base_lrs = base_lrs
                # The saved rates follow the saved schedule; recompute them from this run's schedule so that
                # a resume with a changed train.iterations or optim.lr uses the new curve from its first step (the
                # same expression as LambdaLR's, so an unchanged config gets bit-identical rates).
                for group, base, fn in zip(s.optimizer.param_groups, s.base_lrs, s.lr_lambdas):
                    group["lr"] = base * fn(s.last_epoch)
        self.resume_changes = changes
        if changes and self.is_main:
            print("resume: the optimizer follows the resumed config:\n  " + "\n  ".join(changes), file=sys.stderr)
        if ctx.scaler is not None and ckpt.get("scaler"):
            ctx.scaler.load_state_dict(ckpt["scaler"])
        self.method.load_state_dict(ckpt.get("method") or {})
        for k, s in ctx.streams.items():
            if k in ckpt["streams"]:
                s.load_state_dict(ckpt["streams"][k])
        self.iteration = int(ckpt["iteration"])
        self.last_saved = self.iteration
        self.best = dict(ckpt.get("best") or self.best)
        self.last_eval = ckpt.get("metrics")
        if self.iteration > self.cfg.train.iterations:
            raise ConfigError(f"the checkpoint is at iteration {self.iteration}, past train.iterations="
                              f"{self.cfg.train.iterations}; raise train.iterations to train longer")
        rngs = ckpt["rng"]
        restore_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])


def train(cfg: Config, run_dir: str, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; see :class:`Trainer`."""
    return Trainer(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress).fit()


__all__ = ["Trainer", "TrainingDiverged", "train", "seed_everything"]
