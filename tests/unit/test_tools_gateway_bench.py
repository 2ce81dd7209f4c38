"""The gateway benchmark's open-loop driver and its client-side quieting (no stack needed)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tools.gateway_bench import client_gc_paused, open_loop


def test_open_loop_counts_every_call_and_waits_for_the_slow_ones() -> None:
    async def call(i: int) -> bool:
        await asyncio.sleep(0.02 if i == 39 else 0.005)  # the last one finishes well after the schedule
        return i % 10 != 0

    out = asyncio.run(open_loop(200, 0.2, call))
    assert out["offered"] == 40
    assert out["ok"] == 36 and out["errors"] == 4
    assert out["p50_ms"] >= 5.0
    assert out["max_ms"] >= 20.0


def test_open_loop_returns_when_a_call_raises() -> None:
    async def call(i: int) -> bool:
        await asyncio.sleep(0.001)
        if i == 9:
            raise RuntimeError("boom")
        return True

    out = asyncio.run(asyncio.wait_for(open_loop(100, 0.1, call), timeout=5))
    assert out["ok"] == 9 and out["offered"] == 10


def test_client_gc_is_paused_only_while_a_round_is_timed() -> None:
    assert gc.isenabled()
    with pytest.raises(ValueError):
        with client_gc_paused():
            assert not gc.isenabled()
            raise ValueError
    assert gc.isenabled()
