"""A newcomer's own data end to end (issue 15, issue 13 items 5 and 7): folders of real files through
`semiseg train`, errors before the first step in the terms the user typed, evaluation of mixed sizes,
and what the command line prints."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from semiseg.cli import main

from test_engine_fixtures import tiny_overrides


def run_train(tmp_path, *overrides, name="run"):
    return main(["train", "--no-progress", *tiny_overrides(output_dir=str(tmp_path), name=name), *overrides])


# ---------------------------------------------------------------------------------------------------
# item 7: what the command line prints


def test_no_progress_still_prints_log_lines_and_evaluations(tmp_path, capsys):
    assert run_train(tmp_path) == 0
    out = capsys.readouterr().out
    assert "iteration 2/12: loss" in out and "img/s" in out
    assert "iteration 6: val mIoU" in out and "iteration 12: val mIoU" in out


def test_warnings_print_as_one_clean_line(capsys):
    from semiseg.cli import clean_warnings

    before = warnings.showwarning
    with clean_warnings(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("data.photometric=true recolours the padding of the crops", UserWarning)
    assert warnings.showwarning is before  # restored after the command
    err = capsys.readouterr().err
    assert err == "warning: data.photometric=true recolours the padding of the crops\n"  # no source line, no class
