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
    from deploy.local.processes import StackError

    try:
        local_stack.up()
    except StackError as exc:
        pytest.fail(f"the local stack did not come up: {exc}")
    _IDLE_SNAPSHOT.update(_idle_snapshot(local_stack))
    return SETTINGS


_IDLE_SNAPSHOT: dict = {}


def _idle_snapshot(local_stack) -> dict:
    """Memory of the stack as the session found or started it, and whether it was idle then."""
    import httpx

    from inference_workers import supervisor

    jobs = httpx.get(f"{SETTINGS.flink_url}/jobs/overview", timeout=5).json().get("jobs", [])
    busy = any(j["state"] not in ("CANCELED", "FINISHED", "FAILED") for j in jobs) or any(
        r.alive for r in supervisor.replicas()
    )
    states = local_stack.status()
    return {"idle": not busy, "rss_mb": {s.name: s.rss_mb or 0.0 for s in states}}


@pytest.fixture(scope="session")
def idle_stack_memory(stack) -> dict:
    return _IDLE_SNAPSHOT
