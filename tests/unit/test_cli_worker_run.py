"""`rscf worker run`: how a replica's batching wait is chosen (pool table, option, settings)."""

from __future__ import annotations

import pytest

from cli.commands.workers import worker_settings
from cli.main import build_parser
from rscf.pools import ECHO, TEXT_SMALL, pool
from rscf.settings import SETTINGS


def _settings(*argv: str):
    return worker_settings(build_parser().parse_args(["worker", "run", *argv]))


def test_the_echo_pool_takes_what_is_there_and_a_model_pool_waits_for_a_fuller_batch() -> None:
    assert pool(ECHO).max_wait_ms == 0 and _settings("--pool", ECHO).max_wait_ms == 0
    assert pool(TEXT_SMALL).max_wait_ms is None
    assert _settings("--pool", TEXT_SMALL).max_wait_ms == SETTINGS.limits.worker_max_wait_ms > 0


@pytest.mark.parametrize("name", [ECHO, TEXT_SMALL])
def test_the_option_overrides_the_pool(name: str) -> None:
    assert _settings("--pool", name, "--max-wait-ms", "7").max_wait_ms == 7


def test_the_monolith_baseline_batches_like_the_pool_it_stands_for() -> None:
    from inference_workers.batching import batch_wait_ms

    assert batch_wait_ms(ECHO) == 0 and batch_wait_ms(TEXT_SMALL) == SETTINGS.limits.worker_max_wait_ms
    assert batch_wait_ms("a-pool-not-in-the-table") == SETTINGS.limits.worker_max_wait_ms
    assert batch_wait_ms(ECHO, 3) == 3
