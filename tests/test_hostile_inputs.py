"""The fast rows of benchmarks/hostile_inputs.py (those that need no training run): each must be OK.

The whole table (attacks on checkpoints, resume, divergence, predict, data mistakes) is
``python benchmarks/hostile_inputs.py``; tests/test_safety.py covers its slow rows one by one.
"""

from __future__ import annotations

import pytest

from conftest import load_benchmark

hostile = load_benchmark("hostile_inputs")

FAST = [c for c in hostile.CASES if c.fast]


def test_the_table_has_at_least_30_kinds_of_input():
    assert len(hostile.CASES) >= 30 and len(FAST) >= 20


@pytest.mark.parametrize("case", FAST, ids=[f"{c.area}: {c.name}" for c in FAST])
def test_fast_row(tmp_path, case):
    (row,) = hostile.run_cases([case], str(tmp_path), progress=False)
    assert row["verdict"] == "OK", row
