"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest


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
