"""The fault matrix's reader: a record read again (its own group rewound after a broker restart) is
not a duplicate final; a second record with the same key at another offset is."""

from __future__ import annotations

from tools.chaos_session import FinalsReader


class _Msg:
    def __init__(self, offset: int, rid: str) -> None:
        self._offset, self.rid = offset, rid

    def error(self):
        return None

    def topic(self) -> str:
        return "content"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self.rid.encode()


class _Serde:
    def decode(self, value: bytes) -> dict:
        return {"tenant_id": "t", "request_id": value.decode()}


class _Consumer:
    def __init__(self, batches: list[list[_Msg]]) -> None:
        self.batches = batches

    def consume(self, _n: int, _timeout: float) -> list[_Msg]:
        return self.batches.pop(0) if self.batches else []


def _reader(batches: list[list[_Msg]]) -> FinalsReader:
    r = FinalsReader.__new__(FinalsReader)
    r.c, r.roles, r.serdes = _Consumer(batches), {"content": "content"}, {"content": _Serde()}
    r.finals, r.audits, r.dead_letters, r.undecodable, r.seen, r.reread = {}, {}, [], 0, set(), 0
    return r


def test_a_rewound_reader_does_not_count_the_same_record_twice() -> None:
    r = _reader([[_Msg(0, "a"), _Msg(1, "b")], [_Msg(0, "a"), _Msg(1, "b"), _Msg(2, "c")]])
    r.poll()
    r.poll()
    assert {k: len(v) for k, v in r.finals.items()} == {("t", "a"): 1, ("t", "b"): 1, ("t", "c"): 1}
    assert r.reread == 2


def test_the_same_key_at_another_offset_is_a_duplicate_final() -> None:
    r = _reader([[_Msg(0, "a"), _Msg(5, "a")]])
    r.poll()
    assert len(r.finals[("t", "a")]) == 2
