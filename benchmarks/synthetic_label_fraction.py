"""Is the built-in synthetic dataset hard enough for semi-supervised work, yet learnable on a CPU?

Trains the same small conv net for the same number of steps on all train labels and on 1/8 of them
(a seeded split) and reports val mIoU for both. The gap is the room a semi-supervised method has.
Self-contained (its own tiny net and IoU) so it measures the data, not the rest of the toolkit.

    python benchmarks/synthetic_label_fraction.py --steps 2000 --fractions 1 --threads 1 --rotate
    python benchmarks/synthetic_label_fraction.py --steps 2000 --fractions 0.125 --threads 1 --rotate

Measured (torch 2.14 CPU, 1 thread each, synthetic defaults: 1000 train / 200 val at 128x128, batch 16,
seed-0 split; 2 shared cores, so wall time is about twice the CPU time):

    labels              val mIoU   train mIoU   CPU time
    all (1000)          0.740      0.836        472 s
    1/8 (125)           0.544      0.949        478 s     (memorises its 125 images, generalises worse)
    all (1000), 4000 steps   0.795   0.903        915 s     (still improving: the small net is the limit)
    without --rotate, 1500 steps: all 0.669, 1/8 0.458 (about 300 CPU-s each)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from semiseg.data import build_dataset
from semiseg.data.splits import make_split
from semiseg.data.transforms import normalize


def block(cin, cout, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """Stride-2 stem, encoder to stride 8 with dilated context, decoder with skips back to stride 2,
    bilinear upsampling to full size. About 0.25M parameters, ~0.25 GFLOP per 128x128 image."""

    def __init__(self, num_classes, w=16):
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1), nn.ReLU(inplace=True), block(w, 2 * w))  # /2
        self.e2 = nn.Sequential(nn.MaxPool2d(2), block(2 * w, 3 * w), block(3 * w, 3 * w))                      # /4
        self.e3 = nn.Sequential(nn.MaxPool2d(2), block(3 * w, 4 * w), block(4 * w, 4 * w, 2),
                                block(4 * w, 4 * w, 4))                                                           # /8
        self.d2 = block(7 * w, 3 * w)
        self.d1 = block(5 * w, 2 * w)
        self.head = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x):
        x1 = self.e1(x)
        x2 = self.e2(x1)
        x3 = self.e3(x2)
        up = lambda a, size: F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        y = self.d2(torch.cat([up(x3, x2.shape[-2:]), x2], 1))
        y = self.d1(torch.cat([up(y, x1.shape[-2:]), x1], 1))
        return up(self.head(y), x.shape[-2:])


def render(ds, indices):
    images, masks = zip(*(ds.read(i) for i in indices))
    x = normalize(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    return x, torch.from_numpy(np.stack(masks)).long()


def miou(model, x, y, num_classes, batch=50, verbose=False):
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            pred = model(x[i:i + batch]).argmax(1)
            conf += torch.bincount(y[i:i + batch].flatten() * num_classes + pred.flatten(),
                                   minlength=num_classes ** 2).view(num_classes, num_classes)
    model.train()
    iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag()).clamp(min=1)
    if verbose:  # row-normalised confusion (true class -> predicted), to see which classes get mixed up
        print((100 * conf / conf.sum(1, keepdim=True).clamp(min=1)).round().int())
    return iou.mean().item(), iou


def run(fraction, args, train_x, train_y, names, val_x, val_y, num_classes):
    torch.manual_seed(0)
    split = make_split(names, fraction=fraction, seed=0)
    idx = torch.tensor(split.indices(names)[0])
    model = TinyUNet(num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        b = idx[torch.randint(len(idx), (args.batch,), generator=g)]
        x, y = train_x[b], train_y[b]
        flip = torch.rand(len(b), generator=g) < 0.5  # horizontal flip augmentation
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        if args.rotate:  # the scenes have no "up": a quarter-turn per batch is free extra data
            k = int(torch.randint(4, (1,), generator=g))
            x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % args.log_every == 0:
            print(f"  fraction {fraction}: step {step + 1} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    m, iou = miou(model, val_x, val_y, num_classes, verbose=args.confusion)
    train_m, _ = miou(model, train_x[idx[:200]], train_y[idx[:200]], num_classes)
    return len(idx), m, iou, train_m, time.perf_counter() - t0, time.process_time() - cpu0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.125])
    p.add_argument("--train-length", type=int, default=None)
    p.add_argument("--val-length", type=int, default=None)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--rotate", action="store_true", help="random quarter-turns as extra augmentation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--confusion", action="store_true", help="print the val confusion matrix")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    train = build_dataset("synthetic", split="train", length=args.train_length, size=args.size)
    val = build_dataset("synthetic", split="val", length=args.val_length, size=args.size)
    t = time.perf_counter()
    train_x, train_y = render(train, range(len(train)))
    val_x, val_y = render(val, range(len(val)))
    print(f"rendered {len(train)} train + {len(val)} val images in {time.perf_counter() - t:.1f}s")
    for fraction in args.fractions:
        n, m, iou, train_m, secs, cpu = run(fraction, args, train_x, train_y, train.names, val_x, val_y, train.num_classes)
        per_class = " ".join(f"{c}={v:.2f}" for c, v in zip(train.classes, iou.tolist()))
        print(f"fraction {fraction} ({n} labeled): val mIoU {m:.3f} (train {train_m:.3f}) in {secs:.0f}s ({cpu:.0f} CPU-s)  [{per_class}]",
              flush=True)


if __name__ == "__main__":
    main()
