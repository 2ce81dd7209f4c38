"""Redis ACL users as pure logic: the ACL file, modes, URLs.

The server's own answers: tests/integration/test_redis_acl.py."""

from __future__ import annotations

import fnmatch
import stat

import pytest

from rscf import redis_security as rs


def _lines(data) -> dict[str, list[str]]:
    text = rs.acl_file(data).read_text()
    return {ln.split()[1]: ln.split()[2:] for ln in text.splitlines() if ln.startswith("user ")}


def may(name: str, command: str, key: str | None = None, write: bool = False) -> bool:
    """Redis' own reading of a user's rules, for the rules this module writes (no categories but @all)."""
    u = rs.user(name)
    if u.everything:
        return True
    if command.lower() not in (*rs._CONNECT, *u.commands):
        return False
    if key is None:
        return True
    if any(fnmatch.fnmatchcase(key, p) for p in u.keys):
        return True
    return not write and any(fnmatch.fnmatchcase(key, p) for p in u.read_keys)


def test_acl_file_default_user_off_every_user_reset_with_a_hash_only(tmp_path):
    path = rs.write_acl(tmp_path)
    lines = _lines(tmp_path)
    assert all(ln.startswith("user ") for ln in path.read_text().splitlines())  # Redis refuses anything else
    # off: no connection starts as it, no password logs in as it; its permissions are the AOF replay's
    assert lines["default"] == ["reset", "off", "~*", "&*", "+@all"]
    assert not any(r.startswith((">", "#", "nopass", "on")) for r in lines["default"])
    assert set(lines) == {"default", *rs.USER_BY_NAME}
    for u in rs.USERS:
        rules = lines[u.name]
        assert rules[:2] == ["reset", "on"], u.name  # nothing inherited from an earlier ACL
        pw = rs.password(u.name, tmp_path)
        assert rules[2] == "#" + rs.password_hash(pw) and pw not in path.read_text()
        assert not any(r.startswith((">", "nopass")) for r in rules)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(rs.password_file(rs.JOB, tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets" / "redis").stat().st_mode) == 0o700
    assert lines[rs.ADMIN][3:] == ["~*", "&*", "+@all"]
    assert lines[rs.GATEWAY][3:] == [f"%R~{rs.TEMPLATES_KEY}", "resetchannels", "-@all", "+ping", "+client|setinfo",
                                     "+hget"]


def test_passwords_are_stable_and_the_file_is_rewritten_the_same(tmp_path):
    first = rs.write_acl(tmp_path).read_text()
    assert rs.write_acl(tmp_path).read_text() == first
    assert rs.password(rs.JOB, tmp_path) != rs.password(rs.GATEWAY, tmp_path)
    assert len(rs.password(rs.JOB, tmp_path)) >= 32


def test_least_privilege_per_component():
    t, kb, rate = rs.TEMPLATES_KEY, rs.KB_KEY, rs.POOL_RATE_PREFIX + "rscf-workers-echo"
    # the job: reads templates, searches the knowledge base; writes nothing
    assert may("job", "hget", t) and may("job", "vsim", kb) and may("job", "vcard", kb)
    assert not may("job", "hset", t, write=True) and not may("job", "vadd", kb, write=True)
    assert not may("job", "rpush", rate, write=True) and not may("job", "hget", "rscf:other")
    # the gateway: template ids only
    assert may("gateway", "hget", t)
    assert not may("gateway", "vsim", kb) and not may("gateway", "hset", t, write=True)
    assert not may("gateway", "rpush", rate, write=True) and not may("gateway", "lrange", rate)
    # the controller: its rate history only
    assert may("controller", "rpush", rate, write=True) and may("controller", "lrange", rate)
    assert may("controller", "multi") and may("controller", "exec")
    assert not may("controller", "hget", t) and not may("controller", "rpush", "rscf:kb", write=True)
    assert not may("controller", "del", rate, write=True)
    # the operator: knowledge base and templates, not the controller's history
    assert may("operator", "vadd", kb, write=True) and may("operator", "vadd", kb + ":v2", write=True)
    assert may("operator", "hset", t, write=True) and may("operator", "del", kb, write=True)
    assert not may("operator", "rpush", rate, write=True) and not may("operator", "flushall")
    # health: PING, nothing else
    assert may("health", "ping") and not may("health", "hget", t) and not may("health", "info")
    for name in ("job", "gateway", "controller", "operator", "health"):
        for dangerous in ("flushall", "flushdb", "config", "acl", "keys", "eval", "shutdown", "debug", "module"):
            assert not may(name, dangerous), (name, dangerous)


def test_server_args_keep_an_old_running_redis_as_it_is(tmp_path):
    assert rs.server_args(running=True, data=tmp_path) == []  # started before ACLs: unchanged argv
    assert rs.auth_mode(tmp_path) == rs.NONE
    assert rs.server_args(running=False, data=tmp_path) == ["--aclfile", str(rs.acl_file(tmp_path))]
    assert not rs.acl_file(tmp_path).exists()  # no side effect: _prepare_redis writes it
    rs.write_acl(tmp_path)
    assert rs.auth_mode(tmp_path) == rs.ACL
    assert rs.server_args(running=True, data=tmp_path) == ["--aclfile", str(rs.acl_file(tmp_path))]


def test_urls_carry_the_user_only_with_acls(tmp_path):
    base = "redis://127.0.0.1:6379/0"
    assert rs.with_user(base, rs.JOB, tmp_path) == base  # no ACLs (yet): anonymous, as before
    rs.write_acl(tmp_path)
    url = rs.with_user(base, rs.JOB, tmp_path)
    assert url == f"redis://job:{rs.password(rs.JOB, tmp_path)}@127.0.0.1:6379/0"
    given = "redis://someone:secret@10.0.0.1:6380/0"  # a URL handed to the process keeps its own user
    assert rs.with_user(given, rs.JOB, tmp_path) == given
    assert rs.redact(url) == "redis://job:***@127.0.0.1:6379/0" and rs.redact(base) == base
    import redis

    pool = redis.Redis.from_url(url).connection_pool.connection_kwargs
    assert (pool["username"], pool["password"]) == ("job", rs.password(rs.JOB, tmp_path))


def test_a_client_never_creates_a_password(tmp_path):
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "auth_mode").write_text("acl")
    with pytest.raises(rs.RedisAuthError, match="no password"):
        rs.with_user("redis://127.0.0.1:1/0", rs.JOB, tmp_path)
    assert not rs.password_file(rs.JOB, tmp_path).exists()
    with pytest.raises(rs.RedisAuthError, match="unknown redis user"):
        rs.user("default")
