"""Do a peer's released checkpoints give the same logits in semiseg? UniMatch's DeepLabV3+ against its own code.

    python benchmarks/peer_outputs.py --unimatch /path/UniMatch                                   # current release
    python benchmarks/peer_outputs.py --unimatch /path/UniMatch-v1 --output-stride 8 --multi-grid  # first release

The peer's code is not part of semiseg: check UniMatch (github.com/LiheYoung/UniMatch) out anywhere and pass its
path. Its own ``DeepLabV3Plus`` (model/semseg/deeplabv3plus.py, on its deep-stem ResNet) is built with random
weights and random BatchNorm statistics (no download: its ``pretrained=True`` is turned off at import), saved the
way its training script saves a checkpoint (``{"model": DDP state dict, "optimizer": ..., "epoch", "previous_best"}``),
loaded into semiseg's ``deeplabv3plus_<backbone>`` with ``deep_stem=True`` through :func:`semiseg.models.load_weights`
from the file, and both nets run in eval mode on the same random images. Prints the largest logit difference and
exits 1 when it exceeds ``--tolerance`` times the largest |logit| (random ResNet-101s reach 1e5) or the argmax
differs on any pixel.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def unimatch_model(root: str, backbone: str, output_stride: int, multi_grid: bool, nclass: int):
    """UniMatch's DeepLabV3Plus from its own files, as its configs build it (no pretrained backbone file)."""
    sys.path.insert(0, os.path.abspath(root))
    import model.backbone.resnet as resnet  # noqa: the peer's package, from ``root``
    from model.semseg.deeplabv3plus import DeepLabV3Plus

    original = resnet.__dict__[backbone]
    resnet.__dict__[backbone] = lambda pretrained=False, **kwargs: original(False, **kwargs)
    cfg = {"backbone": backbone, "nclass": nclass,
           "replace_stride_with_dilation": [False, output_stride == 8, True],
           "dilations": [12, 24, 36] if output_stride == 8 else [6, 12, 18]}
    if multi_grid:
        cfg["multi_grid"] = True  # the first release's option (commit 7292bac); later releases dropped it
    return DeepLabV3Plus(cfg)


def randomize_batchnorm_(net):
    import torch

    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return net


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unimatch", required=True, help="a checkout of UniMatch (its model/ folder is used)")
    p.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"])
    p.add_argument("--output-stride", type=int, default=16, choices=[8, 16])
    p.add_argument("--multi-grid", action="store_true", help="the first release's multi_grid: true")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--size", type=int, nargs=2, default=[97, 129], help="input height and width")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="largest logit difference allowed, relative to the largest |logit| (at least 1)")
    args = p.parse_args(argv)

    import torch

    from semiseg.models import build_model, load_weights

    torch.manual_seed(0)
    peer = randomize_batchnorm_(unimatch_model(args.unimatch, args.backbone, args.output_stride, args.multi_grid,
                                               args.classes)).eval()
    ours = build_model(f"deeplabv3plus_{args.backbone}", args.classes, deep_stem=True, decoder_dropout=[0, 0],
                       output_stride=args.output_stride, multi_grid=[2, 2, 4] if args.multi_grid else None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "best.pth")  # what UniMatch's unimatch.py saves under DDP
        torch.save({"model": {f"module.{k}": v for k, v in peer.state_dict().items()}, "optimizer": {"state": {}},
                    "epoch": 3, "previous_best": 41.5}, path)
        report = load_weights(ours, path, strict=True)
    print(report)
    x = torch.randn(args.images, 3, *args.size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = peer(x), ours(x)
    diff, scale = (a - b).abs().max().item(), max(1.0, a.abs().max().item())
    same_argmax = torch.equal(a.argmax(1), b.argmax(1))
    print(f"UniMatch {args.backbone} OS{args.output_stride}{' multi-grid' if args.multi_grid else ''}, "
          f"{args.images} images {args.size[0]}x{args.size[1]}: logits {tuple(a.shape)}, largest difference "
          f"{diff:.3g} (largest |logit| {scale:.3g}: relative {diff / scale:.2g}), argmax equal on every pixel: {same_argmax}")
    return 0 if diff <= args.tolerance * scale and same_argmax else 1


if __name__ == "__main__":
    sys.exit(main())
