"""Envelopes and keyed state: they pickle unchanged, and state written under retired class paths restores."""

from __future__ import annotations

import pickle
import sys

from jobs.envelopes import (
    Admitted, Finished, PromptIn, Republish, ResultIn, SinkRecord, Slot, resolve_retired_state_classes,
)
from tools.harness import prompt
from jobs.orchestrate import Orchestrator
from operators.admit import TokenBucket


def _admitted():
    return Admitted(prompt("r1", "t", "hello"), "hello", [], "STANDARD", frozenset({"echo"}), 1_000)


def test_envelopes_and_state_survive_pickling_unchanged():
    eff = Orchestrator().on_input(_admitted(), None, 1_000)
    slot = Slot(eff.state, eff.features)
    request = SinkRecord("request", "r1", eff.request, pool="echo")
    for value in (_admitted(), PromptIn(prompt("r1", "t", "x"), "x"), ResultIn({"request_id": "r1"}),
                  slot, request, Finished(eff.state, frozenset({"echo"})), Republish("prompt", "t", b"raw")):
        assert pickle.loads(pickle.dumps(value)) == value


def test_state_pickled_under_retired_class_paths_restores():
    """Savepoints before issue #12 hold jobs.stages.Slot / PromptIn and operators.quota.TokenBucket."""
    eff = Orchestrator().on_input(_admitted(), None, 1_000)
    old_paths = {b"cjobs.envelopes\nSlot\n": b"cjobs.stages\nSlot\n",
                 b"cjobs.envelopes\nPromptIn\n": b"cjobs.stages\nPromptIn\n",
                 b"coperators.admit\nTokenBucket\n": b"coperators.quota\nTokenBucket\n"}
    values = (Slot(eff.state, eff.features), [PromptIn(prompt("r1", "t", "x"), "x")], TokenBucket(1.5, 10))
    resolve_retired_state_classes()
    for value in values:
        data = pickle.dumps(value, protocol=0)  # text opcodes: the class path can be rewritten in place
        for new, old in old_paths.items():
            data = data.replace(new, old)
        assert b"jobs.envelopes" not in data and b"operators.admit" not in data
        assert pickle.loads(data) == value
    assert "jobs.stages" in sys.modules and not hasattr(sys.modules["jobs.stages"], "Orchestrator")


def test_envelopes_and_state_pickled_before_issue_13_still_load():
    """Held prompts (PromptIn) and slots (PendingRequest) in a savepoint of the version before: the fields
    issue #13 added read as their defaults."""
    from operators import correlate

    eff = Orchestrator().on_input(_admitted(), None, 1_000)
    old_state = correlate.evolve(eff.state)
    for name in ("degraded", "moderation_fail_closed", "source"):
        old_state.__dict__.pop(name)  # as a pickle of the version before holds it
    restored = pickle.loads(pickle.dumps(Slot(old_state, eff.features))).pending
    assert (restored.degraded, restored.moderation_fail_closed, restored.source) == ((), False, None)
    # positional pickles of the version before call the class with the fields it had
    assert PromptIn(*(prompt("r1", "t", "x"), "x")).source is None
    old_admitted = Admitted(*(prompt("r1", "t", "x"), "x", [], "STANDARD", frozenset(), 1))
    assert (old_admitted.degraded, old_admitted.moderation_fail_closed, old_admitted.source) == ((), False, None)
