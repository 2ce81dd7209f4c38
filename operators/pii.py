"""Find and redact personal data: e-mail, phone numbers, payment cards, IBANs, US SSNs.

Patterns are deliberately followed by checksums where one exists (Luhn for
cards, ISO 7064 mod-97 for IBANs) so long order numbers or random digit runs are
not redacted. Matching is done on the sanitised prompt; redaction replaces each
match with a typed placeholder such as `[EMAIL]` so downstream models keep the
sentence structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# Longer, checksummed kinds first: they win overlaps against the phone pattern.
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])"
)

_SSN_SHAPE = re.compile(r"^\d{3}-\d{2}-\d{4}$")  # invalid SSNs are not phone numbers either
_DATE = re.compile(r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})$")

# IBAN lengths per country (ISO 13616); an unknown country code is not an IBAN.
IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26,
}


@dataclass(frozen=True)
class PiiMatch:
    kind: str  # email, card, iban, ssn, phone
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    iban = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card_ok(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    return luhn_ok(digits)


def _phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:
        return False
    if _DATE.match(text) or _SSN_SHAPE.match(text):
        return False
    # A bare run of digits without separators or + is more often an id than a phone number.
    return text.startswith("+") or text.startswith("(") or bool(re.search(r"[ .()-]", text))


def _iban_span(text: str, start: int) -> tuple[int, int] | None:
    """Span of a valid IBAN starting at `start`: exactly its country's length of characters, spaces allowed."""
    length = IBAN_LENGTHS.get(text[start : start + 2])
    if length is None:
        return None
    count, pos = 0, start
    while pos < len(text) and count < length:
        ch = text[pos]
        if ch.isalnum():
            count += 1
        elif ch != " ":
            break
        pos += 1
    if count != length or (pos < len(text) and text[pos].isalnum()):
        return None
    return (start, pos) if iban_ok(text[start:pos]) else None


def find_pii(text: str) -> list[PiiMatch]:
    """Non-overlapping matches sorted by position (memoised: the full path checks a text up to
    three times, for its moderation, its embedding and its retrieval; ~50 us each, issue #14)."""
    return list(_find_pii_cached(text))


@lru_cache(maxsize=4096)
def _find_pii_cached(text: str) -> tuple[PiiMatch, ...]:
    return tuple(_find_pii(text))


def _find_pii(text: str) -> list[PiiMatch]:
    found: list[PiiMatch] = []

    def free(start: int, end: int) -> bool:
        return all(end <= m.start or start >= m.end for m in found)

    for m in _IBAN.finditer(text):
        span = _iban_span(text, m.start())
        if span is not None and free(*span):
            found.append(PiiMatch("iban", *span))
    for kind, pattern, ok in (
        ("email", _EMAIL, None),
        ("card", _CARD, _card_ok),
        ("ssn", _SSN, None),
        ("phone", _PHONE, _phone_ok),
    ):
        for m in pattern.finditer(text):
            value = m.group(0).strip()
            start = m.start() + (len(m.group(0)) - len(m.group(0).lstrip()))
            end = start + len(value)
            if ok is not None and not ok(value):
                continue
            if free(start, end):
                found.append(PiiMatch(kind, start, end))
    return sorted(found, key=lambda m: m.start)


def redact(text: str, matches: list[PiiMatch] | None = None) -> tuple[str, list[PiiMatch]]:
    """Text with each match replaced by `[KIND]`, and the matches."""
    matches = find_pii(text) if matches is None else matches
    out, pos = [], 0
    for m in matches:
        out.append(text[pos : m.start])
        out.append(f"[{m.kind.upper()}]")
        pos = m.end
    out.append(text[pos:])
    return "".join(out), matches
