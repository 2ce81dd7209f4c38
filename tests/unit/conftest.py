"""Fixtures shared by unit tests."""

from __future__ import annotations

import pytest

from rscf.settings import SETTINGS


@pytest.fixture
def data(tmp_path):
    """A data dir of its own: nothing lands in the stack's (Paths is frozen: set and restore by hand)."""
    old = SETTINGS.paths.data
    object.__setattr__(SETTINGS.paths, "data", tmp_path)
    try:
        yield tmp_path
    finally:
        object.__setattr__(SETTINGS.paths, "data", old)
