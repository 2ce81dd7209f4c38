"""Who may do what on the broker: Kafka principals, their ACLs (as plain data), their credentials.

With ``RSCF_KAFKA_AUTH=scram`` the broker's client listener takes SASL/SCRAM-SHA-512 only and the KRaft
``StandardAuthorizer`` refuses anything no ACL allows. ``admin`` is the super user (the operator CLI,
``rscf up``, tests); every component has its own principal with the least it needs:

- ``job``: reads prompts, results, control (and its outputs: see `_acls`); writes requests, finals
  (content, audit, dead letters) and republished prompts/results; its group and transactional ids
  (prefix ``rscf-``, as job names);
- ``gateway``: writes prompts and (for operator keys it has checked) control; reads finals;
- ``worker-<pool>``: reads only its pool's request lanes, writes results and dead letters;
- ``controller`` (pool controller): describes request topics and rscf- groups (lag), nothing else;
- ``tenant-<id>``: reads only topics ``genai.tenant.<id>.*``. Finals of every tenant share one topic and
  Kafka ACLs stop at topics, not records, so a tenant gets nothing on the shared topics: tenants read
  their results through the gateway's per-tenant stream or ``rscf results --tenant``.

Passwords are generated once per stack into ``<data>/secrets/kafka/<principal>`` (0600) and printed only
by ``rscf credentials kafka``. Which mode a client uses: the mode the local broker was formatted with
(``<data>/kafka/auth_mode``), else ``RSCF_KAFKA_AUTH``, else none; a new broker is formatted with
``RSCF_KAFKA_AUTH``, else ``KafkaAuth.new_broker_mode`` (rscf/settings.py) — so a stack keeps working
whatever the shell says, and a data dir from before authentication stays ``none``.

TLS (README "Kafka over TLS"): the broker also listens on ``RSCF_KAFKA_TLS_PORT`` with SASL_SSL (SSL
on a ``none`` broker), its certificate from the stack's CA (``<data>/secrets/ca.pem``); the same
principals and ACLs apply there. ``tls=True`` (or ``RSCF_KAFKA_TLS=1`` for RSCF's own clients) gives
the settings of that listener: the CA to verify against and host name verification on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rscf.pools import POOLS
from rscf.secrets import load_or_create, random_token
from rscf.settings import SETTINGS

SCRAM, NONE = "scram", "none"
AUTH_MODES = (SCRAM, NONE)
MECHANISM = "SCRAM-SHA-512"
PROTOCOL = "SASL_PLAINTEXT"  # the first listener (RSCF_KAFKA_PORT); README "Kafka authentication"
TLS_PROTOCOL = "SASL_SSL"  # the TLS listener (RSCF_KAFKA_TLS_PORT); SSL on a broker without authentication
# The Flink SQL connector jar relocates the Kafka client under this package (checked in the jar).
FLINK_SHADED = "org.apache.flink.kafka.shaded."
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"

ADMIN, JOB, GATEWAY, CONTROLLER = "admin", "job", "gateway", "controller"
WORKER_PREFIX, TENANT_PREFIX = "worker-", "tenant-"
# A Flink job's group and transactional ids are its name (jobs/config.py): rscf-content-pipeline, the
# backfill lane's rscf-backfill-lane, the test harness' rscf-<suffix>. In another rscf- group (a worker
# pool's) the job can do nothing without READ on that group's topics (the request topics: it has none).
JOB_GROUP_PREFIX = "rscf-"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class KafkaAuthError(RuntimeError):
    """A principal or mode that cannot be used (unknown name, missing credentials, mode mismatch)."""


# ----------------------------------------------------------------------------- mode


def _kafka_dir(data: Path | None = None) -> Path:
    return (data or SETTINGS.paths.data) / "kafka"


def recorded_mode(data: Path | None = None) -> str | None:
    """The mode this data dir's broker was formatted with; ``none`` for one formatted before auth existed."""
    kdir = _kafka_dir(data)
    try:
        return (kdir / "auth_mode").read_text().strip()
    except FileNotFoundError:
        return NONE if (kdir / "data" / "meta.properties").exists() else None


def requested_mode(default: str = NONE) -> str:
    """RSCF_KAFKA_AUTH, else ``default``."""
    mode = SETTINGS.kafka_auth.requested_mode(default)
    if mode not in AUTH_MODES:
        raise KafkaAuthError(f"RSCF_KAFKA_AUTH must be one of {AUTH_MODES}, not {mode!r}")
    return mode


def auth_mode(data: Path | None = None) -> str:
    """What a client uses: its data dir's broker's mode, else RSCF_KAFKA_AUTH, else none (a broker of
    another data dir, started before authentication existed, keeps answering)."""
    return recorded_mode(data) or requested_mode()


# ----------------------------------------------------------------------------- principals and passwords


def worker_principal(pool: str) -> str:
    return f"{WORKER_PREFIX}{pool}"


def tenant_principal(tenant: str) -> str:
    return f"{TENANT_PREFIX}{tenant}"


def fixed_principals() -> tuple[str, ...]:
    """Every component's principal (``rscf up`` creates them); tenants are added on demand."""
    return (ADMIN, JOB, GATEWAY, CONTROLLER, *(worker_principal(p) for p in POOLS))


def check_principal(name: str) -> str:
    if not _NAME.match(name or ""):
        raise KafkaAuthError(f"kafka principal {name!r}: use 1-63 of a-z 0-9 . _ - (starting with a letter or digit)")
    if name not in fixed_principals() and not (name.startswith(TENANT_PREFIX) and len(name) > len(TENANT_PREFIX)):
        raise KafkaAuthError(f"unknown kafka principal {name!r}: one of {', '.join(fixed_principals())} "
                             f"or {TENANT_PREFIX}<tenant id>")
    return name


def password_file(principal: str, data: Path | None = None) -> Path:
    return (data or SETTINGS.paths.data) / "secrets" / "kafka" / check_principal(principal)


def password(principal: str, data: Path | None = None) -> str:
    """The principal's password, generated on first use (0600); the broker learns it from ``rscf up``."""
    path = password_file(principal, data)
    return load_or_create(path.name, lambda: random_token(24), path.parent).decode().strip()


# ----------------------------------------------------------------------------- TLS listener


def ca_file(data: Path | None = None) -> Path:
    """The stack's CA (gateway/tls.py): what a client of the TLS listener verifies the broker against."""
    return (data or SETTINGS.paths.data) / "secrets" / "ca.pem"


def tls_dir(data: Path | None = None) -> Path:
    """The broker's certificate, key and PEM key store (0700/0600; deploy/local/kafka_broker.py)."""
    return (data or SETTINGS.paths.data) / "secrets" / "kafka-tls"


def tls_bootstrap() -> str:
    return f"{SETTINGS.host}:{SETTINGS.ports.kafka_tls}"


def _use_tls(tls: bool | None) -> bool:
    return SETTINGS.kafka_auth.tls if tls is None else tls


# ----------------------------------------------------------------------------- client settings


def credential(principal: str) -> tuple[str, str]:
    """(username, password) to connect as ``principal``. A process handed a credential of its own
    (``RSCF_KAFKA_PRINCIPAL`` + ``RSCF_KAFKA_PASSWORD`` or ``RSCF_KAFKA_PASSWORD_FILE``: a container's
    Secret, a test's subprocess with a data dir of its own) uses that one for every client it makes."""
    given, given_password, password_path = SETTINGS.kafka_auth.given_credential()
    if not given:
        return principal, password(principal)
    if password_path:
        return given, Path(password_path).read_text().strip()
    if not given_password:
        raise KafkaAuthError("RSCF_KAFKA_PRINCIPAL is set without RSCF_KAFKA_PASSWORD or RSCF_KAFKA_PASSWORD_FILE")
    return given, given_password


def credentials_env(principal: str = ADMIN) -> dict[str, str]:
    """Environment that makes a child process (e.g. one with its own RSCF_DATA_DIR) connect to this
    stack's broker as ``principal``, to its Redis as the ACL user of that name (rscf/redis_security.py),
    and sign registry writes with its key (rscf/registry_security.py)."""
    from rscf import redis_security, registry_security

    redis_env = {**redis_security.credentials_env(principal), **registry_security.env()}
    mode = auth_mode()
    if mode == NONE:
        return {**redis_env, "RSCF_KAFKA_AUTH": NONE}
    user, pw = credential(principal)
    return {**redis_env, "RSCF_KAFKA_AUTH": mode, "RSCF_KAFKA_PRINCIPAL": user, "RSCF_KAFKA_PASSWORD": pw}


def librdkafka_security(principal: str, data: Path | None = None, tls: bool | None = None) -> dict[str, str]:
    """The keys a confluent-kafka client adds to connect as ``principal`` ({} without authentication on
    the plaintext listener); ``data``: another stack's data dir (a test's private stack); ``tls``: for
    the TLS listener (default: ``RSCF_KAFKA_TLS``)."""
    tls = _use_tls(tls)
    ssl = {"ssl.ca.location": str(ca_file(data)), "ssl.endpoint.identification.algorithm": "https"} if tls else {}
    if auth_mode(data) == NONE:
        return {"security.protocol": "SSL", **ssl} if tls else {}
    user, pw = credential(principal) if data is None else (principal, password(principal, data))
    return {"security.protocol": TLS_PROTOCOL if tls else PROTOCOL, **ssl, "sasl.mechanism": MECHANISM,
            "sasl.username": user, "sasl.password": pw}


def _java_tls(prefix: str, data: Path | None = None) -> dict[str, str]:
    """A Java client's trust store for the TLS listener: the CA's PEM file as it is (ssl.truststore.type=PEM)."""
    return {f"{prefix}ssl.truststore.type": "PEM", f"{prefix}ssl.truststore.location": str(ca_file(data)),
            f"{prefix}ssl.endpoint.identification.algorithm": "https"}


def flink_security(principal: str = JOB, tls: bool | None = None) -> dict[str, str]:
    """The same for the Flink SQL Kafka connector's WITH options (``properties.*``, shaded login module)."""
    tls = _use_tls(tls)
    ssl = _java_tls("properties.") if tls else {}
    if auth_mode() == NONE:
        return {"properties.security.protocol": "SSL", **ssl} if tls else {}
    user, pw = credential(principal)
    jaas = f'{FLINK_SHADED}{SCRAM_LOGIN_MODULE} required username="{user}" password="{pw}";'
    return {"properties.security.protocol": TLS_PROTOCOL if tls else PROTOCOL, **ssl,
            "properties.sasl.mechanism": MECHANISM, "properties.sasl.jaas.config": jaas}


def java_security(principal: str, tls: bool = False) -> dict[str, str]:
    """The Java client's properties (a user's own Java/Kafka CLI client): unshaded login module."""
    ssl = _java_tls("") if tls else {}
    if auth_mode() == NONE:
        return {"security.protocol": "SSL", **ssl} if tls else {}
    user, pw = credential(principal)
    jaas = f'{SCRAM_LOGIN_MODULE} required username="{user}" password="{pw}";'
    return {"security.protocol": TLS_PROTOCOL if tls else PROTOCOL, **ssl, "sasl.mechanism": MECHANISM,
            "sasl.jaas.config": jaas}


# ----------------------------------------------------------------------------- ACLs as data


@dataclass(frozen=True)
class Acl:
    """One ALLOW binding for a principal on 127.0.0.1's broker (any host)."""

    principal: str
    resource: str  # TOPIC | GROUP | TRANSACTIONAL_ID | CLUSTER
    name: str
    pattern: str  # LITERAL | PREFIXED
    operation: str  # READ | WRITE | DESCRIBE | CREATE


def _grant(principal: str, resource: str, names: tuple[str, ...], ops: tuple[str, ...],
           pattern: str = "PREFIXED") -> list[Acl]:
    return [Acl(principal, resource, n, pattern, op) for n in names for op in ops]


def acls_for(principal: str) -> list[Acl]:
    """Each ALLOW binding of ``principal`` once (see `_acls`)."""
    return list(dict.fromkeys(_acls(principal)))


def _acls(principal: str) -> list[Acl]:
    """Every ALLOW binding of ``principal``. Topic grants are PREFIXED so that the isolated topic sets of
    tests and benchmarks (``genai.content.<suffix>``) follow the same rules as the stack's own."""
    t = SETTINGS.topics
    rd, wr = ("READ", "DESCRIBE"), ("WRITE", "DESCRIBE")
    check_principal(principal)
    if principal == ADMIN:
        return []  # super user (broker config)
    if principal == JOB:
        # READ on its outputs too: the transactional sink's POOLING ids look for lingering transactions
        # with DescribeProducers, which Kafka authorises as READ (measured: the job fails without it).
        return (_grant(JOB, "TOPIC", (t.prompts, t.results, t.control, t.content, t.audit, t.dlq), rd)
                + _grant(JOB, "TOPIC", (t.request_prefix, t.content, t.audit, t.dlq, t.prompts, t.results), wr)
                + _grant(JOB, "GROUP", (JOB_GROUP_PREFIX,), rd)
                + _grant(JOB, "TRANSACTIONAL_ID", (JOB_GROUP_PREFIX,), wr))
    if principal == GATEWAY:
        return (_grant(GATEWAY, "TOPIC", (t.prompts, t.control), wr)
                + _grant(GATEWAY, "TOPIC", (t.content,), rd)
                + _grant(GATEWAY, "GROUP", ("rscf-gateway",), rd))
    if principal == CONTROLLER:
        return (_grant(CONTROLLER, "TOPIC", (t.request_prefix,), ("DESCRIBE",))
                + _grant(CONTROLLER, "GROUP", ("rscf-",), ("DESCRIBE",)))  # worker and lane groups: lag only
    if principal.startswith(WORKER_PREFIX):
        pool = principal[len(WORKER_PREFIX):]
        own = t.requests(pool)  # exactly the pool's topic, and its lanes / test suffixes after a dot
        return (_grant(principal, "TOPIC", (own,), ("READ", "DESCRIBE", "CREATE"), "LITERAL")
                + _grant(principal, "TOPIC", (own + ".",), ("READ", "DESCRIBE", "CREATE"))
                + _grant(principal, "TOPIC", (t.results, t.dlq), wr)
                + _grant(principal, "GROUP", (f"rscf-workers-{pool}",), rd))
    tenant = principal[len(TENANT_PREFIX):]
    return (_grant(principal, "TOPIC", (f"genai.tenant.{tenant}.",), rd)
            + _grant(principal, "GROUP", (f"{principal}.",), rd))
