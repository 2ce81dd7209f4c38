"""Bring up only some services of the local stack, for a test module's fixture."""

from __future__ import annotations

import pytest


def services_up(names: list[str], what: str) -> None:
    """Start these services if they are not up; fail the test with the stack's reason otherwise."""
    from deploy.local import stack as local_stack
    from deploy.local.processes import StackError

    try:
        local_stack.up(only=names)
    except StackError as exc:
        pytest.fail(f"{what} did not come up: {exc}")
