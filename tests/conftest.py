"""Test-session setup.

The engine tests plug a tiny model and dataset in through ``module:function`` names
(``test_engine_fixtures:tiny_model``), which end up in the checkpoints and run configs they evaluate and resume.
semiseg refuses such names when it reads them back from a file unless the user allows code
(``--allow-code`` / ``SEMISEG_ALLOW_CODE=1``); the test session is that user. Subprocesses inherit it.
Tests of the refusal itself remove the variable (``monkeypatch.delenv``) or pass an environment without it.
"""

from __future__ import annotations

import os

import pytest

os.environ["SEMISEG_ALLOW_CODE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def precision_cache_in_a_temporary_folder(tmp_path_factory):
    """`precision: auto` caches its CPU timings; tests must neither read the user's cache (a cached choice would
    hide the code path) nor write to it. Set in os.environ so that `python -m semiseg` children inherit it."""
    before = os.environ.get("SEMISEG_CACHE")
    os.environ["SEMISEG_CACHE"] = str(tmp_path_factory.mktemp("semiseg_cache"))
    yield
    if before is None:
        os.environ.pop("SEMISEG_CACHE", None)
    else:
        os.environ["SEMISEG_CACHE"] = before
