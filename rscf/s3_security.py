"""Who may do what in object storage: S3 identities (as plain data), their keys, and the server's JWT keys.

SeaweedFS takes identities from ``s3.json`` (re-rendered at every ``rscf up``, re-read on SIGHUP), each
with actions scoped to a bucket (``Read:rscf-models``) or to a prefix in it (``Read:rscf-artifacts/
tenants/acme/*``: checked on this SeaweedFS, 4.48). ``admin`` (access key ``RSCF_S3_ACCESS_KEY``,
``rscf``: the one key of a data dir from before) keeps everything; every component has its own key with
the least it needs:

- ``rscf-worker``: writes artifacts and dead-letter claim checks, reads models; reads no artifact back;
- ``rscf-job`` (the Flink jobs and their S3 filesystem): reads, writes and lists the backfill bucket,
  writes claim checks;
- ``rscf-gateway``: reads artifacts under ``tenants/`` (it signs the presigned URLs it hands out);
- ``tenant-<id>``: reads and lists its own artifact prefix ``tenants/<id>/`` only.

Secret keys are generated once per stack into ``<data>/secrets/s3/<access key>`` (0600); the admin's
stays ``<data>/secrets/s3_secret_key``. A process handed a key of its own (``RSCF_S3_SECRET_KEY`` or
``RSCF_S3_SECRET_KEY_FILE``, with ``RSCF_S3_ACCESS_KEY``: a container's Secret, a test's subprocess)
uses that one for every client, as before. The master, volume and filer ports take no S3 key: the
server's ``security.toml`` (JWT signing keys, `security_toml`) makes the volume and filer ports refuse
unsigned reads and writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rscf.secrets import load_or_create, random_token
from rscf.settings import SETTINGS

ADMIN, WORKER, JOB, GATEWAY = "admin", "rscf-worker", "rscf-job", "rscf-gateway"
TENANT_PREFIX = "tenant-"
ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
# The JWT keys of security.toml: volume writes, volume reads, filer writes, filer reads.
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
JWT_EXPIRES_S = 10
# A tenant id as `rscf tenants keys create` allows it: its artifact prefix is then the id itself.
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class S3AuthError(RuntimeError):
    """An identity that cannot be used (unknown name, bad tenant id)."""


def tenant_identity(tenant: str) -> str:
    if not _TENANT.match(tenant or ""):
        raise S3AuthError(f"tenant id {tenant!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return f"{TENANT_PREFIX}{tenant}"


def check_identity(name: str) -> str:
    if name in component_identities():
        return name
    if name.startswith(TENANT_PREFIX):
        return tenant_identity(name[len(TENANT_PREFIX):])
    raise S3AuthError(f"unknown S3 identity {name!r}: one of {', '.join(component_identities())} "
                      f"or {TENANT_PREFIX}<tenant id>")


def component_identities() -> tuple[str, ...]:
    """Every component's identity (``rscf up`` writes them); tenants are added on demand."""
    return (ADMIN, WORKER, JOB, GATEWAY)


def _scoped(actions: tuple[str, ...], *resources: str) -> tuple[str, ...]:
    return tuple(f"{a}:{r}" for r in resources for a in actions)


def actions_for(name: str) -> tuple[str, ...]:
    """What ``name`` may do, as SeaweedFS actions (the table of the module's docstring)."""
    b = SETTINGS.buckets
    tenants = "tenants/"
    check_identity(name)
    if name == ADMIN:
        return ADMIN_ACTIONS
    if name == WORKER:
        return _scoped(("Write",), b.artifacts, b.audit) + _scoped(("Read", "List"), b.models)
    if name == JOB:
        return _scoped(("Read", "Write", "List"), b.backfill) + _scoped(("Write",), b.audit)
    if name == GATEWAY:
        return _scoped(("Read",), f"{b.artifacts}/{tenants}*")
    tenant = name[len(TENANT_PREFIX):]
    return _scoped(("Read", "List"), f"{b.artifacts}/{tenants}{tenant}/*")


# ----------------------------------------------------------------------------- keys


def _secrets(data: Path | None) -> Path:
    return (data or SETTINGS.paths.data) / "secrets" / "s3"


def secret_file(name: str, data: Path | None = None) -> Path:
    if check_identity(name) == ADMIN:
        return (data or SETTINGS.paths.data) / "secrets" / "s3_secret_key"
    return _secrets(data) / name


def access_key(name: str) -> str:
    return SETTINGS.s3.access_key if check_identity(name) == ADMIN else name


def secret_key(name: str, data: Path | None = None) -> str:
    """``name``'s secret key, generated on first use (0600); the server learns it at ``rscf up`` (or
    `rscf credentials s3`, which re-renders s3.json and signals the server)."""
    if check_identity(name) == ADMIN and data is None:
        return SETTINGS.s3.secret_key  # env, the secrets file, or a pre-secrets data dir's s3.json
    path = secret_file(name, data)
    return load_or_create(path.name, lambda: random_token(24), path.parent).decode().strip()


def given_credential() -> bool:
    """Whether this process was handed a key of its own (RSCF_S3_SECRET_KEY[_FILE])."""
    return SETTINGS.s3.given()


def credential(name: str) -> tuple[str, str]:
    """(access key, secret key) to connect as ``name``; a process handed its own key uses that one."""
    if given_credential():
        return SETTINGS.s3.access_key, SETTINGS.s3.secret_key
    return access_key(name), secret_key(name)


def known_tenants(data: Path | None = None) -> list[str]:
    """Tenants with a key in this stack (created by `rscf credentials s3 tenant-<id>`), sorted."""
    try:
        names = [p.name for p in _secrets(data).iterdir() if p.name.startswith(TENANT_PREFIX)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _TENANT.match(n[len(TENANT_PREFIX):]))


# ----------------------------------------------------------------------------- the server's files (pure)


def render_identities(keys: dict[str, tuple[str, str]]) -> dict:
    """s3.json: one identity per entry of ``keys`` (name -> (access key, secret key)), the admin's first (a
    data dir without a secrets file takes the admin key from the first identity: rscf/settings.py)."""
    return {"identities": [
        {"name": name, "credentials": [{"accessKey": ak, "secretKey": sk}], "actions": list(actions_for(name))}
        for name, (ak, sk) in keys.items()]}


# Every gRPC server and client role of SeaweedFS 4.x: in `weed mini` they all run in one process and dial
# each other, so each gets the same certificate (its own server side, and its client side towards the others).
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")
GRPC_COMMON_NAME = "rscf-weed"  # the only certificate of the stack's CA that the gRPC ports accept


@dataclass(frozen=True)
class GrpcTls:
    ca: Path
    cert: Path
    key: Path


def security_toml(jwt_keys: dict[str, str], expires_s: int = JWT_EXPIRES_S, grpc: GrpcTls | None = None) -> str:
    """security.toml: the volume and filer HTTP ports refuse requests without a JWT signed by these keys;
    with ``grpc`` every gRPC port demands a client certificate of that CA named GRPC_COMMON_NAME."""
    lines = []
    for section in JWT_SECTIONS:
        key = jwt_keys[section]
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,}", key):
            raise S3AuthError(f"JWT key of [{section}] must be 16+ URL-safe characters")
        lines += [f"[{section}]", f'key = "{key}"', f"expires_after_seconds = {expires_s}", ""]
    if grpc is not None:
        for path in (grpc.ca, grpc.cert, grpc.key):
            if '"' in str(path) or "\\" in str(path):
                raise S3AuthError(f"certificate path not usable in TOML: {path}")
        lines += ["[grpc]", f'ca = "{grpc.ca}"', ""]
        for component in GRPC_COMPONENTS:
            lines += [f"[grpc.{component}]", f'cert = "{grpc.cert}"', f'key = "{grpc.key}"',
                      f'allowed_commonNames = "{GRPC_COMMON_NAME}"', ""]
        lines += ["[grpc.client]", f'cert = "{grpc.cert}"', f'key = "{grpc.key}"', ""]
    return "\n".join(lines)


def server_keys(data: Path | None = None) -> dict[str, tuple[str, str]]:
    """Every identity the server knows: the components', then each known tenant's."""
    names = [*component_identities(), *known_tenants(data)]
    return {n: (access_key(n), secret_key(n) if n == ADMIN else secret_key(n, data)) for n in names}


def jwt_keys(data: Path | None = None) -> dict[str, str]:
    """The server's JWT signing keys, generated once (0600)."""
    base = _secrets(data)
    return {s: load_or_create(s.replace('.', '-'), lambda: random_token(32), base).decode().strip()
            for s in JWT_SECTIONS}
