"""The worker's cache of results already produced (inference_workers/answered.py)."""

from __future__ import annotations

from inference_workers.answered import AnsweredCache, answer_key, cacheable


def req(rid: str, attempt: int = 1, tenant: str = "t") -> dict:
    return {"request_id": rid, "attempt": attempt, "tenant_id": tenant}


def test_keyed_by_tenant_request_and_attempt() -> None:
    cache = AnsweredCache(8)
    cache.put(req("a"), b"A1")
    assert cache.get(req("a")) == b"A1"
    assert cache.get(req("a", attempt=2)) is None and cache.get(req("a", tenant="u")) is None
    assert answer_key({"request_id": "a"}) == ("", "a", 0)


def test_bounded_least_recently_used_goes_first() -> None:
    cache = AnsweredCache(2)
    cache.put(req("a"), b"A")
    cache.put(req("b"), b"B")
    assert cache.get(req("a")) == b"A"  # a is now the most recent
    cache.put(req("c"), b"C")
    assert cache.get(req("b")) is None and cache.get(req("a")) == b"A" and len(cache) == 2
    off = AnsweredCache(0)
    off.put(req("a"), b"A")
    assert off.get(req("a")) is None


def test_only_answers_that_would_recur_are_kept() -> None:
    assert cacheable({"status": "OK"})
    assert cacheable({"status": "ERROR", "retryable": False})
    assert not cacheable({"status": "ERROR", "retryable": True})
