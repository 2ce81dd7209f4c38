"""Redis ACL users against the stack's real Redis: anonymous and `default` refused, each component's user
does what its code path needs and is refused outside its keys and commands (rscf/redis_security.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid

import numpy as np
import pytest
import redis

from deploy.local import supervision
from rscf import redis_security as rs
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def acl(stack):
    if rs.auth_mode() != rs.ACL:
        pytest.fail("this data dir's Redis runs without ACL users (started before them): `rscf down` + `rscf up`")
    return rs.client(rs.ADMIN)


def refused(call) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as info:
        call()
    return str(info.value)


def test_anonymous_default_and_wrong_passwords_are_refused(acl):
    host, port = SETTINGS.host, SETTINGS.ports.redis
    with pytest.raises(redis.exceptions.AuthenticationError):  # NOAUTH: the default user is off
        redis.Redis(host=host, port=port, socket_timeout=2).ping()
    for user, pw in (("default", ""), ("default", "x"), ("job", "wrong"), ("nobody", rs.password(rs.ADMIN))):
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=host, port=port, username=user, password=pw, socket_timeout=2).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):  # another user's password is not yours
        redis.Redis(host=host, port=port, username="admin", password=rs.password(rs.JOB), socket_timeout=2).ping()


def test_no_password_in_the_acl_file_nor_on_the_command_line(acl):
    text = rs.acl_file().read_text()
    assert stat.S_IMODE(rs.acl_file().stat().st_mode) == 0o600
    assert acl.config_get("aclfile")["aclfile"] == str(rs.acl_file())
    # Redis rewrites its process title: the command line it was given is supervisord's program line
    command = supervision.layout().conf.read_text()
    assert f"--aclfile {rs.acl_file()}" in command
    for u in rs.USERS:
        pw = rs.password(u.name)
        assert pw not in text and pw not in command
    assert {r[1]: r for r in (ln.split() for ln in acl.acl_list())}["default"][2] == "off"


def test_the_job_reads_templates_and_searches_the_knowledge_base_and_writes_nothing(acl):
    from jobs.clients import redis_client
    from jobs.config import JobConfig, job_redis_url
    from operators.templates import RedisTemplateStore
    from operators.vector_index import RedisVectorSetIndex

    cfg = JobConfig()
    assert "--redis-url" not in cfg.to_args() and rs.password(rs.JOB) not in " ".join(cfg.to_args())
    assert job_redis_url(cfg).startswith(f"redis://{rs.JOB}:")  # what the job finds where it runs
    tid = f"acl-test-{RUN}"
    RedisTemplateStore(rs.client(rs.OPERATOR)).put(tid, "Summarise: {{prompt}}")  # the operator writes
    try:
        job = redis_client(cfg)
        assert RedisTemplateStore(job, cache_ttl_s=0).get(tid) == "Summarise: {{prompt}}"
        index = RedisVectorSetIndex(job)
        dim = int(acl.execute_command("VDIM", rs.KB_KEY)) if acl.exists(rs.KB_KEY) else 4
        assert isinstance(index.search(np.ones(dim, dtype=np.float32), 1), list)  # VSIM: allowed (hits or none)
        assert index.count() >= 0
        assert "hset" in refused(lambda: job.hset(rs.TEMPLATES_KEY, tid, "x"))
        assert "VADD" in refused(lambda: RedisVectorSetIndex(job).add(["x"], np.ones((1, dim)), [{}]))
        refused(lambda: job.rpush(rs.POOL_RATE_PREFIX + "x", "1"))
        refused(lambda: job.get("rscf:other"))
        refused(lambda: job.flushall())
    finally:
        acl.hdel(rs.TEMPLATES_KEY, tid)


def test_the_gateway_reads_templates_only(acl, tmp_path):
    from gateway import runtime
    from operators.templates import RedisTemplateStore

    tid = f"acl-gw-{RUN}"
    RedisTemplateStore(rs.client(rs.OPERATOR)).put(tid, "Translate: {{prompt}}")
    rt = runtime.build(secrets_base=tmp_path, start_reader=False)  # the gateway's own wiring
    try:
        assert rt.templates._client.connection_pool.connection_kwargs["username"] == rs.GATEWAY
        assert rt.templates.get(tid) == "Translate: {{prompt}}"
        assert rt.templates.get(f"missing-{RUN}") is None  # an unknown id, not "store unavailable"
    finally:
        rt.close()
        acl.hdel(rs.TEMPLATES_KEY, tid)
    gw = rs.client(rs.GATEWAY)
    assert gw.hget(rs.TEMPLATES_KEY, f"missing-{RUN}") is None
    assert "hset" in refused(lambda: gw.hset(rs.TEMPLATES_KEY, f"acl-{RUN}", "x"))
    refused(lambda: gw.rpush(rs.POOL_RATE_PREFIX + f"acl-{RUN}", "1 1"))  # not the controller's history
    refused(lambda: gw.set(f"rscf:quota:acl-{RUN}", "1"))  # nor any other key
    refused(lambda: gw.execute_command("VSIM", rs.KB_KEY, "VALUES", 1, 1.0))


def test_the_controller_keeps_its_rate_history_and_nothing_else(acl):
    from inference_workers.controller_io import RateHistory

    group = f"acl-test-{RUN}"
    hist = RateHistory(rs.url(rs.CONTROLLER), keep=3)
    try:
        for i in range(5):
            hist.add(group, 100.0 + i, float(i))
        assert hist.load(group) == [(102.0, 2.0), (103.0, 3.0), (104.0, 4.0)]  # RPUSH + LTRIM in a MULTI
        ctl = hist._client()
        refused(lambda: ctl.hget(rs.TEMPLATES_KEY, "x"))
        refused(lambda: ctl.delete(hist.key(group)))
        refused(lambda: ctl.keys("*"))
    finally:
        acl.delete(hist.key(group))


def test_the_controllers_transactions_survive_a_redis_restart(acl):
    """The AOF replays MULTI/EXEC as the (disabled) default user: it must keep them (see DEFAULT_RULES)."""
    import signal
    import time

    from deploy.local.services import SERVICE_BY_NAME
    from inference_workers.controller_io import RateHistory

    group = f"acl-aof-{RUN}"
    hist = RateHistory(rs.url(rs.CONTROLLER), keep=3)
    try:
        for i in range(6):  # each add past `keep` trims: RPUSH + LTRIM go to the AOF as one MULTI/EXEC
            hist.add(group, 100.0 + i, float(i))
        want = [(103.0, 3.0), (104.0, 4.0), (105.0, 5.0)]
        assert hist.load(group) == want
        time.sleep(1.5)  # appendfsync everysec
        prog = supervision.program_states(supervision.layout())["redis"]
        os.kill(prog.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = supervision.program_states(supervision.layout()).get("redis")
            if now is not None and now.pid not in (None, prog.pid) and SERVICE_BY_NAME["redis"].health():
                break
            time.sleep(0.2)
        fresh = RateHistory(rs.url(rs.CONTROLLER), keep=3)
        assert fresh.load(group) == want  # not the state before the transactions
        assert not [e for e in rs.client(rs.ADMIN).acl_log() if e.get("context") == "multi"]
    finally:
        rs.client(rs.ADMIN).delete(hist.key(group))


def test_the_operator_writes_the_knowledge_base_and_templates_not_the_rest(acl):
    from operators.vector_index import RedisVectorSetIndex

    op = rs.client(rs.OPERATOR)
    key = f"{rs.KB_KEY}:acl-test-{RUN}"
    index = RedisVectorSetIndex(op, key=key, quantization="NOQUANT")
    try:
        index.add(["a", "b"], np.eye(2, 4, dtype=np.float32), [{"t": "a"}, {"t": "b"}])
        assert index.count() == 2 and index.search(np.array([1, 0, 0, 0], dtype=np.float32), 1)[0][0] == "a"
        index.clear()
        assert not acl.exists(key)
    finally:
        acl.delete(key)
    refused(lambda: op.rpush(rs.POOL_RATE_PREFIX + f"acl-{RUN}", "1 1"))
    refused(lambda: op.set(f"test:acl-{RUN}", "1"))
    refused(lambda: op.config_get("*"))


def test_health_pings_only_and_the_stack_health_check_uses_it(acl):
    from deploy.local.services import SERVICE_BY_NAME

    health = rs.client(rs.HEALTH)
    assert health.ping()
    refused(lambda: health.hget(rs.TEMPLATES_KEY, "x"))
    refused(lambda: health.info())
    assert SERVICE_BY_NAME["redis"].health()


def test_credentials_command_prints_a_working_connection(acl):
    rscf = [str(SETTINGS.paths.venv / "bin" / "python"), "-m", "cli.main"]
    env = {**os.environ, "PYTHONPATH": str(SETTINGS.paths.repo)}
    out = subprocess.run([*rscf, "credentials", "redis", "gateway", "--json"], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    conf = json.loads(out.stdout)
    assert conf["username"] == "gateway" and "may: keys rscf:templates (read-only)" in out.stderr
    gw = redis.Redis(**{k: v for k, v in conf.items() if k != "url"})
    assert gw.hget(rs.TEMPLATES_KEY, "x") is None
    refused(lambda: gw.hset(rs.TEMPLATES_KEY, "x", "y"))
    assert redis.Redis.from_url(conf["url"]).ping()
    bad = subprocess.run([*rscf, "credentials", "redis", "default"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode != 0 and "unknown redis user" in bad.stderr
