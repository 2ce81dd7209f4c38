"""Kafka keys of requests, results, finals and audit records: (tenant_id, request_id)."""

from __future__ import annotations

from schemas.keys import SEP, identity_key, is_legacy_key, split_identity_key


def test_identity_keys_split_back_and_two_tenants_never_share_one():
    assert identity_key("acme", "r1") == "acme\x1fr1" and SEP == "\x1f"
    assert identity_key("acme", "r1") != identity_key("beta", "r1")
    assert split_identity_key("acme\x1fr1") == ("acme", "r1") and split_identity_key(b"acme\x1fr1") == ("acme", "r1")
    assert split_identity_key("acme\x1fr\x1f1") == ("acme", "r\x1f1")  # tenants cannot hold the separator
    assert identity_key("", "r1") == identity_key(None, "r1") == "r1"  # no tenant: the request_id alone
    assert split_identity_key("r1") == ("", "r1") and is_legacy_key("r1") and not is_legacy_key("a\x1fr1")
    assert split_identity_key(None) is None and split_identity_key(b"") is None
    assert split_identity_key(b"\xff\xfe") is None
