"""Run logs: metrics.jsonl (always) and TensorBoard events (when installed). Main process only."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from semiseg.atomic import atomic_write_text
from semiseg.engine.run_dir import METRICS, TENSORBOARD
from semiseg.metrics import to_json_dict


def _clean(v: Any) -> Any:
    # strict JSON has no NaN/inf: absent classes and diverged losses become null
    return to_json_dict(v)


def truncate_metrics(path: str, iteration: int) -> None:
    """Drop events after ``iteration`` (written by a run killed after its last checkpoint), so a resumed
    run's log reads as one consistent history."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by kill -9
            if event.get("iteration", 0) <= iteration:
                keep.append(json.dumps(event))
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class MetricsLog:
    def __init__(self, run_dir: str, *, enabled: bool = True, tensorboard: bool = True, resume_iteration: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(run_dir, METRICS)
        self.writer = None
        if not enabled:
            return
        if resume_iteration is not None:
            truncate_metrics(self.path, resume_iteration)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                SummaryWriter = None
            if SummaryWriter is not None:
                # purge_step drops events a killed run wrote after its last checkpoint
                self.writer = SummaryWriter(os.path.join(run_dir, TENSORBOARD), purge_step=resume_iteration)

    def log(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        event = {"kind": kind, "iteration": iteration, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(_clean(event)) + "\n")
        self._file.flush()
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.writer.add_scalar(f"{kind}/{k}", v, iteration)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, METRICS)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["MetricsLog", "read_metrics", "truncate_metrics"]
