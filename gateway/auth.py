"""Who is calling: an API key or an OAuth2 access token, turned into a Principal (key id, tenant, role).

Credentials come in ``Authorization: Bearer <api key or JWT>`` or ``X-API-Key``; never in a
query string (URLs end up in logs). Errors carry a stable code and never echo the credential.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.apikeys import PREFIX, KeyStore
from gateway.tokens import TokenError, TokenService

OPERATOR_ROLES = ("operator", "admin")


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    role: str
    via: str  # "api_key" or "token"


class AuthError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def _credential(authorization: str | None, api_key: str | None) -> str:
    if api_key:
        return api_key.strip()
    if not authorization:
        raise AuthError(401, "missing_credentials", "send Authorization: Bearer <API key or access token>")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError(401, "malformed_credentials", "expected Authorization: Bearer <credential>")
    return value.strip()


class Authenticator:
    def __init__(self, keys: KeyStore, tokens: TokenService) -> None:
        self.keys = keys
        self.tokens = tokens

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        presented = _credential(authorization, api_key)
        if presented.startswith(PREFIX):
            record = self.keys.verify(presented)
            if record is None:
                raise AuthError(401, "invalid_api_key", "unknown, revoked or malformed API key")
            return Principal(record.key_id, record.tenant, record.role, "api_key")
        try:
            claims = self.tokens.verify(presented)
        except TokenError as exc:
            raise AuthError(401, exc.code, exc.detail) from None
        record = self.keys.get(claims.key_id)
        if record is None or not record.active:
            raise AuthError(401, "revoked_key", "the API key this token was issued for is revoked")
        if (record.tenant, record.role) != (claims.tenant, claims.role):
            raise AuthError(401, "invalid_token", "token claims do not match its key")
        return Principal(record.key_id, record.tenant, record.role, "token")

    def client_credentials(self, client_id: str, client_secret: str) -> tuple[str, int, Principal]:
        """RFC 6749 §4.4: the client id is the key id, the secret the key's secret (or the whole key)."""
        secret = client_secret
        if client_secret.startswith(PREFIX):
            key_id, _, secret = client_secret[len(PREFIX):].partition(".")
            if key_id != client_id:
                raise AuthError(401, "invalid_client", "client authentication failed")
        record = self.keys.verify_secret(client_id, secret) if client_id and secret else None
        if record is None:
            raise AuthError(401, "invalid_client", "client authentication failed")
        token, ttl = self.tokens.issue(record.key_id, record.tenant, record.role)
        return token, ttl, Principal(record.key_id, record.tenant, record.role, "token")


def require_operator(principal: Principal) -> None:
    if principal.role not in OPERATOR_ROLES:
        raise AuthError(403, "forbidden", "this endpoint needs the operator or admin role")
