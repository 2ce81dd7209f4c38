"""Shared fixtures: the real local stack, brought up once per test session."""

from __future__ import annotations

import os

import pytest

from rscf.settings import SETTINGS


def pytest_collection_modifyitems(config, items):
    # Tests that take the stack down run after everything that needs it.
    items.sort(key=lambda item: 1 if item.get_closest_marker("stack_lifecycle") else 0)


def pytest_configure(config):
    config.addinivalue_line("markers", "stack_lifecycle: stops and restarts the whole stack; runs last")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def stack():
    """The running local stack (started here if needed, left running for the next session)."""
    from deploy.local import stack as local_stack

    try:
        local_stack.up()
    except local_stack.StackError as exc:
        pytest.fail(f"the local stack did not come up: {exc}")
    return SETTINGS
