"""Who may write to the schema registry: bearer tokens signed by a key the stack generates.

Apicurio 3 authenticates through Quarkus OIDC. Quarkus can verify tokens locally against one
public key (``quarkus.oidc.public-key``: no OIDC server, no network call per token), so the stack
keeps an RSA key pair of its own, ``<data>/secrets/registry_signing_key.pem`` (0600, generated at
the first ``rscf up``; a key distinct from the gateway's token key, so no tenant token is ever a
registry credential), and starts the registry with its public half. What the registry then does:

- reads (``GET``, and the serdes' look-up ``POST /subjects/{subject}``) stay anonymous, so any
  Kafka client with the registry's Avro serde decodes without a credential;
- registering a version, changing a subject's compatibility or deleting need a token with the
  role ``sr-developer`` (register, configure subjects) or ``sr-admin`` (also delete, global rules,
  import/export); ``sr-readonly`` and anonymous writers get 403 / 401;
- a token is an RS256 JWT: issuer ``ISSUER``, audience ``AUDIENCE``, its roles in ``groups``,
  expiry checked (measured on Apicurio 3.3.3: wrong audience, wrong issuer, expired, or another key:
  401 each; tests/integration/test_registry_auth.py).

RSCF's own processes sign their tokens with the key file (``token_provider``: a confluent-kafka
``SchemaRegistryClient`` ``CUSTOM`` bearer source, so every serde that registers a subject does it
transparently); a process with a data dir of its own is pointed at the stack's key with
``RSCF_REGISTRY_KEY_FILE`` (``env``); anyone else gets a token from ``rscf credentials registry``.
``RSCF_REGISTRY_AUTH=0`` starts the registry without authentication.
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

from rscf.secrets import load_or_create
from rscf.settings import SETTINGS

ISSUER = "rscf-local"
AUDIENCE = "rscf-registry"
KEY_FILE = "registry_signing_key.pem"
ADMIN, DEVELOPER, READONLY = "sr-admin", "sr-developer", "sr-readonly"
ROLES = (ADMIN, DEVELOPER, READONLY)
TOKEN_TTL_S = 900  # RSCF's own tokens; refreshed at 80 % of their life
MAX_TTL_S = 7 * 24 * 3600  # `rscf credentials registry --ttl`


class RegistryAuthError(RuntimeError):
    """No signing key where one is needed, or an unknown role."""


def key_file(data: Path | None = None) -> Path:
    """The signing key: RSCF_REGISTRY_KEY_FILE, else this (or ``data``'s) data dir's secrets."""
    given = SETTINGS.registry_key_file
    if given and data is None:
        return Path(given)
    return (Path(data) / "secrets" if data is not None else SETTINGS.paths.secrets) / KEY_FILE


def _new_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_key(data: Path | None = None) -> bytes:
    """The private key PEM, generated on first use (O_EXCL: concurrent starters agree on one)."""
    path = key_file(data)
    return load_or_create(path.name, _new_key, path.parent)


def public_key_b64(data: Path | None = None) -> str:
    """The public key as Quarkus' ``quarkus.oidc.public-key`` takes it: base64 DER, no PEM armour."""
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(ensure_key(data), password=None)
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def registry_flags(data: Path | None = None) -> list[str]:
    """The registry's JVM flags for authenticated writes and anonymous reads ([] with RSCF_REGISTRY_AUTH=0)."""
    if not SETTINGS.registry_auth:
        return []
    return [
        "-Dquarkus.oidc.tenant-enabled=true",
        f"-Dquarkus.oidc.public-key={public_key_b64(data)}",
        f"-Dquarkus.oidc.token.issuer={ISSUER}",
        f"-Dquarkus.oidc.token.audience={AUDIENCE}",
        "-Dapicurio.auth.role-based-authorization=true",
        "-Dapicurio.auth.role-source=token",
        "-Dapicurio.auth.anonymous-read-access.enabled=true",
    ]


def registry_properties(data: Path | None = None) -> str:
    """The same settings as a properties file, for a registry in a container: point Quarkus at it with
    QUARKUS_CONFIG_LOCATIONS=file:<path> (checked on the Apicurio 3.3.3 jar: anonymous write 401, token 200)."""
    return "".join(flag.removeprefix("-D") + "\n" for flag in registry_flags(data))


def mint(subject: str, role: str = DEVELOPER, ttl_s: int = TOKEN_TTL_S, data: Path | None = None) -> str:
    """A signed token for ``subject`` with ``role``; RegistryAuthError without a readable key."""
    import jwt

    if role not in ROLES:
        raise RegistryAuthError(f"unknown registry role {role!r}: one of {', '.join(ROLES)}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise RegistryAuthError(f"ttl must be 1..{MAX_TTL_S} s")
    path = key_file(data)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise RegistryAuthError(f"no registry signing key at {path} ({type(exc).__name__}): run `rscf up` "
                                "or set RSCF_REGISTRY_KEY_FILE") from None
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "upn": subject, "groups": [role],
              "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, pem, algorithm="RS256")


class _CachedToken:
    """One token per (subject, role), re-minted at 80 % of its life; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    def get(self, subject: str, role: str) -> str:
        key = (subject, role, str(key_file()))
        now = time.time()
        with self._lock:
            token, renew_at = self._tokens.get(key, ("", 0.0))
            if now >= renew_at:
                token = mint(subject, role)
                self._tokens[key] = (token, now + 0.8 * TOKEN_TTL_S)
            return token


_CACHE = _CachedToken()


def _bearer_fields(config: dict[str, Any]) -> dict[str, str]:
    return {"bearer.auth.token": _CACHE.get(config["subject"], config["role"]),
            "bearer.auth.logical.cluster": "rscf"}  # required by the client; Apicurio ignores it


def _can_sign() -> bool:
    """The registry checks tokens and this process holds the key (else it sends none and can only read)."""
    return SETTINGS.registry_auth and key_file().is_file()


def client_auth(subject: str = "rscf", role: str = DEVELOPER) -> dict[str, Any]:
    """SchemaRegistryClient keys that sign every request's token from the key file ({} when the stack runs
    the registry without authentication, or this process has no key: it can then only read)."""
    if not _can_sign():
        return {}
    return {"bearer.auth.credentials.source": "CUSTOM",
            "bearer.auth.custom.provider.function": _bearer_fields,
            "bearer.auth.custom.provider.config": {"subject": subject, "role": role}}


def auth_headers(subject: str = "rscf", role: str = DEVELOPER) -> dict[str, str]:
    """An Authorization header for a plain HTTP call to the registry ({} as in `client_auth`)."""
    if not _can_sign():
        return {}
    return {"Authorization": f"Bearer {_CACHE.get(subject, role)}"}


def env(data: Path | None = None) -> dict[str, str]:
    """Environment that lets a child process with a data dir of its own sign with this stack's key."""
    return {"RSCF_REGISTRY_KEY_FILE": str(key_file(data))}
