"""The gate's start-up wait, as pure logic: when is the control topic read to where it ended?"""

from __future__ import annotations

from jobs.intake import POSITION, SOURCE, control_updates
from jobs.policy_wait import POLL_MS, PolicyWait
from tools.harness import policy_event


def test_the_wait_ends_when_every_partition_is_read_to_its_end_empty_ones_included():
    wait = PolicyWait({0: 3, 1: 0, 2: 1}, wait_ms=30_000)
    assert not wait.over(1_000)
    wait.seen(0, 2)
    assert not wait.over(1_001)  # partition 2 holds offset 0, not read yet
    wait.seen(2, 0)
    wait.seen(0, 1)  # an older position never moves it back
    assert wait.over(1_002) and wait.over_at == 1_002 and wait.positions == {0: 2, 2: 0}


def test_the_cap_counts_from_the_first_look_and_unknown_ends_wait_it_out():
    wait = PolicyWait(None, wait_ms=500)
    assert not wait.over(10_000) and wait.next_look(10_000) == 10_000 + POLL_MS
    assert wait.next_look(10_450) == 10_500  # never past the cap
    assert not wait.over(10_499) and wait.over(10_500)


def test_no_wait_configured_is_over_from_the_start():
    assert PolicyWait(None, wait_ms=0).over(0)


def test_positions_come_back_from_broadcast_state_and_control_events_set_them():
    wait = PolicyWait({0: 8}, wait_ms=30_000)
    wait.restore([("tenant:acme", {}), (POSITION + "0", 7)])
    assert wait.over(0)
    event = {**policy_event("acme", ["echo"]), SOURCE: (0, 7)}
    assert (POSITION + "0", 7) in control_updates(event)
    assert control_updates({SOURCE: (1, 4)}) == [(POSITION + "1", 4)]  # a dead-lettered event's position alone
