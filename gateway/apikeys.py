"""API keys: created and revoked by `rscf tenants keys ...`, stored hashed in a 0600 file.

A key reads ``rscf_<key id>.<secret>``; the key id is public (it names the key in logs, rate
limits and audit), the secret is 256 random bits shown once at creation. Only SHA-256 of
the secret is stored: with 256-bit random secrets a fast hash is as strong as a slow one
(GitHub's and Stripe's tokens work the same way), and it keeps a lookup at ~2 µs. The
gateway re-reads the file when its mtime changes, so a revocation counts from the next
request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rscf.settings import SETTINGS
from rscf.secrets import secrets_dir, write_private

PREFIX = "rscf_"
ROLES = ("tenant", "operator", "admin")
TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
FILE_NAME = "api_keys.json"


class KeyAdminError(ValueError):
    """Bad input to key management (unknown tenant format, role, key id)."""


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    tenant: str
    role: str
    hash: str
    created_at: float
    name: str = ""
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict:
        """What `rscf tenants keys list` shows: never the hash."""
        return {k: v for k, v in asdict(self).items() if k != "hash"}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def split_key(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a presented API key, None when it is not shaped like one."""
    if not presented.startswith(PREFIX) or len(presented) > 200:
        return None
    key_id, dot, secret = presented[len(PREFIX):].partition(".")
    if not dot or not _KEY_ID_RE.fullmatch(key_id) or not secret:
        return None
    return key_id, secret


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise KeyAdminError(f"tenant {tenant!r}: 1-64 characters of A-Z a-z 0-9 _ -")
    return tenant


class KeyStore:
    """The key file; every method re-reads it when it changed on disk (CLI and gateway share it)."""

    def __init__(self, base: Path | None = None) -> None:
        self.path = secrets_dir(base or SETTINGS.paths.secrets) / FILE_NAME
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, KeyRecord] = {}

    def _load(self) -> dict[str, KeyRecord]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._keys = None, {}
            return self._keys
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            raw = json.loads(self.path.read_text() or "{}")
            self._keys = {k: KeyRecord(**v) for k, v in raw.get("keys", {}).items()}
            self._stamp = stamp
        return self._keys

    def _save(self, keys: dict[str, KeyRecord]) -> None:
        write_private(self.path, json.dumps({"keys": {k: asdict(v) for k, v in keys.items()}}, indent=1).encode())
        self._stamp = None

    def create(self, tenant: str, role: str = "tenant", name: str = "") -> tuple[KeyRecord, str]:
        """A new key for ``tenant``; returns its record and the full key (the only time it is shown)."""
        check_tenant(tenant)
        if role not in ROLES:
            raise KeyAdminError(f"role {role!r}: one of {', '.join(ROLES)}")
        with self._lock:
            keys = dict(self._load())
            key_id = secrets.token_hex(8)
            secret = secrets.token_urlsafe(32)
            record = KeyRecord(key_id, tenant, role, _digest(secret), round(time.time(), 3), name[:80])
            keys[key_id] = record
            self._save(keys)
        return record, f"{PREFIX}{key_id}.{secret}"

    def revoke(self, key_id: str) -> KeyRecord:
        with self._lock:
            keys = dict(self._load())
            record = keys.get(key_id)
            if record is None:
                raise KeyAdminError(f"no key {key_id!r}")
            if record.active:
                record = KeyRecord(**{**asdict(record), "revoked_at": round(time.time(), 3)})
                keys[key_id] = record
                self._save(keys)
        return record

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        with self._lock:
            keys = self._load()
        return sorted((k for k in keys.values() if tenant is None or k.tenant == tenant), key=lambda k: k.created_at)

    def get(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            return self._load().get(key_id)

    def verify(self, presented: str) -> KeyRecord | None:
        """The active key a presented API key proves, else None (unknown, wrong secret, revoked)."""
        parts = split_key(presented)
        if parts is None:
            return None
        return self.verify_secret(*parts)

    def verify_secret(self, key_id: str, secret: str) -> KeyRecord | None:
        record = self.get(key_id)
        if record is None or not record.active:
            return None
        return record if hmac.compare_digest(record.hash, _digest(secret)) else None
