"""semiseg: supervised and semi-supervised semantic segmentation in PyTorch."""

__version__ = "0.1.0"
