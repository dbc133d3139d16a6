"""CPU inference: torch eager vs the exported ONNX file under onnxruntime, images per second at 512x512.

    python benchmarks/onnx_speed.py --threads 1 --rounds 3 --out bench_out/onnx_speed.json
    python benchmarks/onnx_speed.py deeplabv3plus_mobilenetv2 --size 512 --threads 1 --rounds 5

Each model (random weights, 21 classes, the recipe's model options) is exported with semiseg's own exporter
(semiseg.export.export_onnx, ``--dynamic`` as ``semiseg predict`` needs it: any image size) and run by three
backends on the same image, interleaved in one process (each round times every backend once; median and
minimum kept):

* **eager fp32**: the model in float32, contiguous, ``torch.no_grad()`` -- plain PyTorch;
* **eager fp32 CL**: the same in channels_last (the best fp32 eager mode for some models: what ``precision: auto``
  can pick on a CPU without native bf16);
* **eager auto**: semiseg's default inference (``precision: auto``, ``channels_last: auto`` as semiseg/runtime.py
  measures them for a no-grad forward of this model at this size);
* **onnxruntime**: a CPUExecutionProvider session with ``intra_op_num_threads`` = the torch thread count,
  ``inter_op_num_threads`` 1, sequential execution, all graph optimisations.

Two tasks per backend: **eval** = the logits of one normalised (1, 3, H, W) image (what ``semiseg eval`` runs per
image); **predict** = a uint8 RGB image to its uint8 class mask (normalise, forward, argmax: what ``semiseg predict``
runs per image, without the PNG writing). The argmax agreement with eager fp32 is printed for each backend.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from semiseg.config import load_config
from semiseg.data.transforms import normalize
from semiseg.engine.build import build_model, model_normalization, precision_choice
from semiseg.runtime import cpu_name
from semiseg.export import export_onnx
from semiseg.inference import infer
from semiseg.onnx_predict import OnnxPredictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    "deeplabv2_resnet101": "configs/voc/deeplabv2_resnet101.yaml",
    "fcn8s_vgg16": "configs/voc/fcn8s_vgg16.yaml",
    "deeplabv3plus_mobilenetv2": "configs/voc/deeplabv3plus_mobilenetv2.yaml",
}
NUM_CLASSES = 21


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(name: str, size: int, rounds: int, workdir: str) -> dict:
    cfg = load_config(os.path.join(ROOT, RECIPES[name]), [f"data.crop_size=[{size},{size}]"])
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES, pretrained=False).eval()
    with torch.no_grad():  # FCN score layers start at zero: give every weight a value so the masks mean something
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    norm = model_normalization(cfg, model)
    path = os.path.join(workdir, f"{name}.onnx")
    t_export, _ = _timed(lambda: export_onnx(model, path, height=size, width=size, dynamic=True,
                                             metadata={"semiseg.normalization": norm, "semiseg.model": name}))
    ort = OnnxPredictor(path, threads=torch.get_num_threads())
    choice = precision_choice(cfg, model, NUM_CLASSES, torch.device("cpu"), task="infer", batch=1)
    print(f"{name}: {choice.line}", flush=True)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    auto_model = cl_model if choice.channels_last else model

    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = normalize(image, norm).unsqueeze(0)

    def eager(m, precision, cl):
        return lambda: infer(m, x, precision=precision, channels_last=cl)

    def eager_predict(m, precision, cl):
        return lambda: infer(m, normalize(image, norm).unsqueeze(0), precision=precision,
                             channels_last=cl).argmax(1)[0].to(torch.uint8).numpy()

    contenders = {
        "eval eager fp32": eager(model, "fp32", False),
        "eval eager fp32 CL": eager(cl_model, "fp32", True),
        "eval eager auto": eager(auto_model, choice.precision, choice.channels_last),
        "eval onnxruntime": lambda: ort.logits(x),
        "predict eager fp32": eager_predict(model, "fp32", False),
        "predict eager fp32 CL": eager_predict(cl_model, "fp32", True),
        "predict eager auto": eager_predict(auto_model, choice.precision, choice.channels_last),
        "predict onnxruntime": lambda: ort.predict_mask(image),
    }
    outputs = {k: fn() for k, fn in contenders.items()}  # warm-up
    ref = outputs["eval eager fp32"]
    agreement = {
        "fp32_cl": float((outputs["eval eager fp32 CL"].argmax(1) == ref.argmax(1)).float().mean()),
        "auto": float((outputs["eval eager auto"].argmax(1) == ref.argmax(1)).float().mean()),
        "onnxruntime": float((outputs["eval onnxruntime"].argmax(1) == ref.argmax(1)).float().mean()),
        "onnxruntime_mask": float((torch.from_numpy(outputs["predict onnxruntime"]).long()
                                   == ref.argmax(1)[0]).float().mean()),
        "onnxruntime_max_abs_logit_diff": float((outputs["eval onnxruntime"] - ref).abs().max()),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        for k, fn in contenders.items():
            times[k].append(_timed(fn)[0])
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"model": name, "size": size, "auto_mode": choice.precision + (" + channels_last" if choice.channels_last else ""),
           "export_s": round(t_export, 1), "onnx_mib": round(os.path.getsize(path) / 2**20, 1),
           "img_s_median": {k: 1 / v for k, v in med.items()},
           "img_s_best": {k: 1 / min(v) for k, v in times.items()},
           "agreement": agreement, "times_s": times}
    print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(RECIPES), help=f"of {list(RECIPES)}")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            rows.append(measure(name, args.size, args.rounds, workdir))
    import onnxruntime

    print(f"\n{cpu_name()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{torch.get_num_threads()} thread(s); images/s, median (best) of {args.rounds} interleaved rounds")
    tasks = [t for t in ["eager fp32", "eager fp32 CL", "eager auto", "onnxruntime"] if f"eval {t}" in rows[0]["img_s_median"]]
    print("| model | task | " + " | ".join(tasks) + " | onnxruntime / eager auto | onnxruntime / best fp32 eager | auto mode |")
    print("|---" * (5 + len(tasks)) + "|")
    for r in rows:
        for task in ("eval", "predict"):
            m, b = r["img_s_median"], r["img_s_best"]
            cells = " | ".join(f"{m[f'{task} {t}']:.3f} ({b[f'{task} {t}']:.3f})" for t in tasks)
            ratio = m[f"{task} onnxruntime"] / m[f"{task} eager auto"]
            fp32 = max(m[f"{task} {t}"] for t in tasks if t.startswith("eager fp32"))
            print(f"| {r['model']} | {task} | {cells} | {ratio:.2f}x | {m[f'{task} onnxruntime'] / fp32:.2f}x | "
                  f"{r['auto_mode']} |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"cpu": cpu_name(), "platform": platform.machine(), "torch": torch.__version__,
                       "onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads(),
                       "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
