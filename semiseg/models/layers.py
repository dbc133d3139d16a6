"""Small layers and initialisers shared by the model families.

Bilinear upsampling as a transposed convolution
-----------------------------------------------
FCN (Long et al.) and the d2l FCN upsample class scores with a ``ConvTranspose2d`` whose kernel is a bilinear
interpolation kernel (``shelhamer/fcn.berkeleyvision.org`` ``surgery.upsample_filt``), so that the layer starts
as plain bilinear upsampling and may then be learned or kept fixed.

With ``stride = s`` (even), ``kernel_size = 2 * s`` and ``padding = s // 2`` the output is exactly ``s`` times
the input and equals ``F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)`` on every pixel at
least ``s`` pixels away from the border (at the border the transposed convolution sees zeros where ``interpolate``
repeats the edge value). Without padding (the caffe FCN layout) the same values appear shifted by ``s // 2``
pixels, which is what the FCN crop offsets undo.
"""

from __future__ import annotations

import torch
from torch import nn


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weight of shape ``(in_channels, out_channels, k, k)`` for a ``ConvTranspose2d`` that upsamples bilinearly.

    Channel ``i`` is upsampled into channel ``i`` only (the kernel is diagonal over channels), so
    ``in_channels`` must equal ``out_channels``.
    """
    if in_channels != out_channels:
        raise ValueError(
            f"bilinear upsampling maps each channel to itself, so in_channels must equal out_channels "
            f"(got {in_channels} and {out_channels})"
        )
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    # A tent of half-width `factor` centred on the kernel: for kernel 2s this is the stride-s bilinear kernel.
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    filt = torch.outer(ramp, ramp)
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size, dtype=torch.float64)
    channels = torch.arange(in_channels)
    weight[channels, channels] = filt
    return weight.to(dtype)


@torch.no_grad()
def init_bilinear_(conv_transpose: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Initialise ``conv_transpose`` in place as bilinear upsampling; zero its bias if it has one.

    Works for an ordinary transposed convolution (``groups=1``, ``in_channels == out_channels``) and for a
    depthwise one (``groups == in_channels == out_channels``). Returns the module, for chaining.
    """
    if not isinstance(conv_transpose, nn.ConvTranspose2d):
        raise TypeError(f"expected nn.ConvTranspose2d, got {type(conv_transpose).__name__}")
    kh, kw = conv_transpose.kernel_size
    if kh != kw:
        raise ValueError(f"bilinear initialisation needs a square kernel, got {kh}x{kw}")
    c_in, c_out, groups = conv_transpose.in_channels, conv_transpose.out_channels, conv_transpose.groups
    if groups == 1:
        weight = bilinear_kernel(c_in, c_out, kh)
    elif groups == c_in == c_out:
        # Depthwise weight is (C, 1, k, k): every channel gets the same 2-D filter.
        weight = bilinear_kernel(1, 1, kh).expand(c_in, 1, kh, kh)
    else:
        raise ValueError(
            f"bilinear initialisation needs groups=1 or groups=in_channels=out_channels; got in={c_in}, "
            f"out={c_out}, groups={groups}"
        )
    conv_transpose.weight.copy_(weight)
    if conv_transpose.bias is not None:
        conv_transpose.bias.zero_()
    return conv_transpose


class UpsamplingConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same state-dict keys) that runs in float32 under CPU autocast.

    Why: the FCN upsampling layers have large kernels (2 x stride: up to 64x64), and on CPU torch's bfloat16
    transposed convolution takes a slow path for them: about 30x its float32 time on an Intel Xeon with AMX
    (2x11x8x10 -> 256x320, 1 thread), which made bf16 autocast slow the whole FCN-ResNet-18 down 2.6x (training)
    and 8x (inference) although the backbone's convolutions run 5-8x faster in bf16 there (BENCHMARKS.md). The
    layer is a small share of the FLOPs, so float32 costs nothing measurable; on CUDA autocast is left alone.
    """

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if input.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(input.float(), output_size)
        return super().forward(input, output_size)


__all__ = ["bilinear_kernel", "init_bilinear_", "UpsamplingConvTranspose2d"]
