"""The fast rows of benchmarks/hostile_inputs.py (those that need no training run): each must be OK.

The whole table (attacks on checkpoints, resume, divergence, predict, data mistakes) is
``python benchmarks/hostile_inputs.py``; tests/test_safety.py covers its slow rows one by one.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location("hostile_inputs", os.path.join(REPO, "benchmarks", "hostile_inputs.py"))
hostile = importlib.util.module_from_spec(_spec)
sys.modules["hostile_inputs"] = hostile  # (its dataclasses look their module up)
_spec.loader.exec_module(hostile)

FAST = [c for c in hostile.CASES if c.fast]


def test_the_table_has_at_least_30_kinds_of_input():
    assert len(hostile.CASES) >= 30 and len(FAST) >= 20


@pytest.mark.parametrize("case", FAST, ids=[f"{c.area}: {c.name}" for c in FAST])
def test_fast_row(tmp_path, case):
    (row,) = hostile.run_cases([case], str(tmp_path), progress=False)
    assert row["verdict"] == "OK", row
