"""Exactly-once by read-back, the pure part: identities, and what the filter drops and keeps."""

from __future__ import annotations

from collections import Counter

from jobs.orchestrate import number_final
from jobs.replay_filter import IDENTITY_HEADER, ReplayFilter, fingerprint, headers_of, identity
from operators.correlate import EffectKind, Effects, PendingRequest


def _row(topic, key, ident):
    return (topic, key, b"value", headers_of(ident))


def test_a_final_is_dropped_once_per_copy_already_written():
    held = Counter({fingerprint("content", b"k", b"content/0@0:5"): 2})
    f = ReplayFilter(held, now_ms=1_000, hold_ms=10_000)
    rows = [_row("content", b"k", b"content/0@0:5")] * 3 + [_row("content", b"k", b"content/1@0:5")]
    kept = f.rows(rows, 2_000)
    assert kept == [_row("content", b"k", b"content/0@0:5"), _row("content", b"k", b"content/1@0:5")]
    assert f.dropped == 2 and not f.written  # spent


def test_another_topic_key_or_no_identity_is_never_dropped():
    f = ReplayFilter(Counter({fingerprint("content", b"k", b"content/0"): 1}), 0, 10_000)
    assert f.keep("audit", b"k", {IDENTITY_HEADER: b"content/0"}, 1)
    assert f.keep("content", b"other", {IDENTITY_HEADER: b"content/0"}, 1)
    assert f.keep("content", b"k", None, 1) and f.keep("content", b"k", {}, 1)
    assert not f.keep("content", b"k", {IDENTITY_HEADER: b"content/0"}, 1)


def test_the_read_back_is_forgotten_after_its_hold():
    f = ReplayFilter(Counter({fingerprint("content", b"k", b"content/0"): 1}), now_ms=0, hold_ms=100)
    assert f.keep("content", b"k", {IDENTITY_HEADER: b"content/0"}, 101) and not f.written


def test_without_anything_read_back_rows_pass_as_they_are():
    rows = [_row("content", b"k", b"content/0")]
    assert ReplayFilter(Counter(), 0, 0).rows(rows, 1) is rows


def test_identities_of_finals_and_dead_letters():
    assert identity("content", {}, "0@1:2") == b"content/0@1:2"
    dl = {"source_topic": "genai.prompts", "source_partition": 3, "source_offset": 42, "stage": "decode",
          "reason": "undecodable"}
    assert identity("dlq", dl, None) == b"genai.prompts/3/42/decode/undecodable"
    assert identity("dlq", {**dl, "source_offset": -1}, None) is None  # made by the job itself: no position
    assert identity("dlq", {**dl, "source_offset": None}, None) is None
    assert identity("request", {}, None) is None and headers_of(None) is None


def _pending(**kw):
    base = dict(request_id="r", tenant_id="t", modality="TEXT", priority="NORMAL", prompt="p", prompt_sha256="x",
                params={}, created_at_ms=0, accepted_at_ms=0)
    return PendingRequest(**{**base, **kw})


def test_finals_are_numbered_in_the_state_they_keep():
    effects = Effects(EffectKind.EMIT_FINAL, _pending(status="SUCCEEDED", source=(2, 9)))
    effects.final = ({}, {})
    assert number_final(effects) == "0@2:9" and effects.state.final_seq == 1
    again = Effects(EffectKind.REJECT_DUPLICATE, effects.state)
    again.final = ({}, {})
    assert number_final(again) == "1@2:9" and again.state.final_seq == 2
    no_source = Effects(EffectKind.EMIT_FINAL, _pending(status="FAILED"))
    no_source.final = ({}, {})
    assert number_final(no_source) == "0"
    assert number_final(Effects(EffectKind.EMIT_REQUEST, _pending())) is None  # no final, no number


def test_a_state_pickled_before_final_seq_existed_reads_it_as_zero():
    import pickle

    state = _pending()
    old = pickle.loads(pickle.dumps(state))
    assert old.final_seq == 0
    args = state.__reduce__()[1][:-1]  # a positional pickle of the version before: one field fewer
    assert PendingRequest(*args).final_seq == 0


def test_fingerprints_tell_topic_key_and_identity_apart():
    base = fingerprint("content", b"k", b"content/0")
    assert len(base) == 12 and base == fingerprint("content", b"k", b"content/0")
    others = {fingerprint("audit", b"k", b"content/0"), fingerprint("content", b"k2", b"content/0"),
              fingerprint("content", b"k", b"content/1"), fingerprint("content", None, b"content/0"),
              fingerprint("content", b"k\0content/0", b"")}
    assert base not in others and len(others) == 5
