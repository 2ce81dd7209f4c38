"""OAuth2 client-credentials access tokens: ES256 JWTs signed by a key the stack generates.

The signing key (P-256) is created on first use in the secrets dir (0600); its public half
is served as a JWKS so any resource server can verify tokens offline (a container is handed
its key as a file: deploy/container_secrets.py). A token names the API key it was issued for
(``sub``), its tenant and role; verification checks signature,
algorithm (ES256 only: no ``none``, no HMAC confusion), issuer, audience, expiry and
issued-at, and that the key is still active (revoking a key ends its tokens too).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from rscf.secrets import load_or_create
from rscf.settings import SETTINGS

ALGORITHM = "ES256"
KEY_FILE = "jwt_signing_key.pem"


class TokenError(ValueError):
    """A token that does not prove anything; ``code`` is a stable reason (no token content in it)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Claims:
    key_id: str
    tenant: str
    role: str
    expires_at: int


def new_signing_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TokenService:
    def __init__(self, base: Path | None = None, issuer: str | None = None, audience: str | None = None,
                 ttl_s: int | None = None, key_file: Path | None = None) -> None:
        """``key_file``: a PEM key to sign with (a container's secret, read-only), else the secrets dir's."""
        if key_file:
            pem = key_file.read_bytes()
        else:
            pem = load_or_create(KEY_FILE, new_signing_key, base or SETTINGS.paths.secrets)
        self._private = serialization.load_pem_private_key(pem, password=None)
        self._public = self._private.public_key()
        der = self._public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = hashlib.sha256(der).hexdigest()[:16]
        self.issuer = issuer or SETTINGS.gateway.issuer
        self.audience = audience or SETTINGS.gateway.audience
        self.ttl_s = ttl_s or SETTINGS.gateway.token_ttl_s

    def issue(self, key_id: str, tenant: str, role: str, now: float | None = None) -> tuple[str, int]:
        """(token, seconds it lives)."""
        iat = int(now if now is not None else time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": key_id, "tenant": tenant, "role": role,
                  "iat": iat, "nbf": iat, "exp": iat + self.ttl_s, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._private, algorithm=ALGORITHM, headers={"kid": self.kid}), self.ttl_s

    def verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed_token", "not a JWT") from exc
        if header.get("alg") != ALGORITHM:
            raise TokenError("invalid_token", f"algorithm must be {ALGORITHM}")
        if header.get("kid") != self.kid:
            raise TokenError("invalid_token", "unknown signing key")
        try:
            payload: dict[str, Any] = jwt.decode(
                token, self._public, algorithms=[ALGORITHM], audience=self.audience, issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]}, leeway=5)
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("expired_token", "the token has expired; request a new one") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("wrong_audience", f"the token is not for audience {self.audience}") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("wrong_issuer", f"the token was not issued by {self.issuer}") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", type(exc).__name__) from exc
        tenant, role = payload.get("tenant"), payload.get("role")
        if not isinstance(tenant, str) or not isinstance(role, str):
            raise TokenError("invalid_token", "tenant and role claims are required")
        return Claims(str(payload["sub"]), tenant, role, int(payload["exp"]))

    def jwks(self) -> dict:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self._public, as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}
