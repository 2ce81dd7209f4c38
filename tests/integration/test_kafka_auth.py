"""Kafka authentication and ACLs on a real broker (issue #16 item 3).

A private broker of this test's own (its data dir, shifted ports, ``RSCF_KAFKA_AUTH=scram``) is started
with the project's own `rscf up --only kafka`, which formats it with the admin's SCRAM credentials and
creates every component's principal and ACLs; tenant principals come from `rscf credentials kafka`.
Then each principal is tried against the broker: refusals are the broker's answers, not the client's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rscf import kafka_security as ks
from rscf.kafka_clients import client_security
from rscf.settings import SETTINGS
from tools.harness import free_port_block

pytestmark = pytest.mark.integration
T = SETTINGS.topics
DENIED = ("TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED")


def _name(err) -> str:
    from confluent_kafka import KafkaError

    code = err if isinstance(err, int) else err.code()
    names = {KafkaError.TOPIC_AUTHORIZATION_FAILED: DENIED[0], KafkaError.GROUP_AUTHORIZATION_FAILED: DENIED[1]}
    return names.get(code, f"error {code}")


class Broker:
    def __init__(self, data: Path) -> None:
        self.data = data
        # below Linux's ephemeral range (32768-60999), where a client connection's local end can hold a port;
        # the TLS listener's port is reserved too (by default it is the client port + 50, unchecked)
        port = free_port_block(3, start=31_000, span=1500)
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RSCF_KAFKA")}
        self.env.pop("RSCF_KAFKA_BOOTSTRAP", None)
        self.env.update({"PYTHONPATH": str(SETTINGS.paths.repo), "RSCF_DATA_DIR": str(data),
                         "RSCF_KAFKA_AUTH": "scram", "RSCF_KAFKA_PORT": str(port),
                         "RSCF_KAFKA_CONTROLLER_PORT": str(port + 1), "RSCF_KAFKA_TLS_PORT": str(port + 2),
                         "RSCF_POOL_CONTROLLER": "off"})

    def rscf(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=SETTINGS.paths.repo, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def conf(self, principal: str | None, **extra) -> dict:
        sec = client_security(principal, data=self.data) if principal else {}
        return {"bootstrap.servers": self.bootstrap, **sec, "log_level": 0, **extra}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    from deploy.local.processes import stop_recorded

    b = Broker(tmp_path_factory.mktemp("kafka-auth"))
    out = b.rscf("up", "--only", "kafka")
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "kafka principals:" in out.stdout
        yield b
    finally:
        b.rscf("down", timeout=120)
        for pid_file in (b.data / "pids").glob("*.pid"):
            stop_recorded(pid_file)


def _produce(broker: Broker, principal: str | None, topic: str, conf: dict | None = None) -> str | None:
    """None when the broker acknowledged the record, else the error's name."""
    from confluent_kafka import Producer

    p = Producer(conf or broker.conf(principal, **{"message.timeout.ms": 8000}))
    errors: list = []
    p.produce(topic, key=b"k", value=b"v", on_delivery=lambda err, msg: errors.append(None if err is None else err.code()))
    p.flush(15)
    return None if errors == [None] else (_name(errors[0]) if errors and errors[0] is not None else "NO_ANSWER")


def _read(broker: Broker, conf: dict, topic: str, group: str) -> str:
    """'read' when a record came back, else the error's name."""
    from confluent_kafka import Consumer

    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                return _name(msg.error())
            return "read"
        return "NOTHING"
    finally:
        c.close()


def _refused(conf: dict) -> bool:
    """Whether the broker refuses a metadata request with ``conf`` (the client is dropped here, at once:
    a failed client kept alive by a traceback upset later confluent-kafka calls of the same process)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=4)
        return False
    except KafkaException:
        return True
    finally:
        del admin


def test_a_client_without_credentials_is_refused(broker):
    assert not _refused(broker.conf("admin"))
    assert _refused(broker.conf(None))
    assert _refused({**broker.conf("admin"), "sasl.password": "not-the-password"})
    assert _refused({**broker.conf("gateway"), "sasl.username": "admin"})  # a principal's password is its own
    # the controller listener takes only the broker's own PLAIN user
    port = int(broker.bootstrap.rsplit(":", 1)[1]) + 1
    assert _refused({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0})
    assert _refused({**broker.conf("admin"), "bootstrap.servers": f"127.0.0.1:{port}"})


def test_only_the_job_writes_finals_and_only_operators_control(broker):
    assert _produce(broker, "job", T.content) is None
    assert _produce(broker, "job", T.requests("echo")) is None
    assert _produce(broker, "admin", T.control) is None  # the operator CLI
    assert _produce(broker, "gateway", T.prompts) is None
    for principal in ("worker-echo", "controller"):
        for topic in (T.control, T.content, T.audit, T.prompts, T.requests("echo")):
            assert _produce(broker, principal, topic) in DENIED, (principal, topic)
    assert _produce(broker, "job", T.control) in DENIED
    assert _produce(broker, "gateway", T.content) in DENIED


def test_only_workers_write_results_and_read_only_their_pool(broker):
    assert _produce(broker, "worker-echo", T.results) is None
    assert _produce(broker, "gateway", T.results) in DENIED
    assert _produce(broker, "admin", T.requests("image")) is None
    group = "rscf-workers-echo"
    assert _read(broker, broker.conf("worker-image"), T.requests("image"), "rscf-workers-image") == "read"
    assert _read(broker, broker.conf("worker-echo"), T.requests("image"), group) in DENIED
    assert _read(broker, broker.conf("worker-echo"), T.content, group) in DENIED


def test_credentials_cli_gives_a_tenant_its_own_data_only(broker):
    from confluent_kafka.admin import AdminClient, NewTopic

    out = broker.rscf("credentials", "kafka", "tenant-acme", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    acme = json.loads(out.stdout)  # a plain confluent-kafka config, as a user gets it
    assert acme["sasl.username"] == "tenant-acme" and acme["bootstrap.servers"] == broker.bootstrap
    assert acme["sasl.password"] == ks.password("tenant-acme", broker.data)
    assert "sasl.password" not in out.stderr and acme["sasl.password"] not in out.stderr
    assert broker.rscf("credentials", "kafka", "tenant-beta", timeout=60).returncode == 0
    tag = uuid.uuid4().hex[:6]
    own, other = f"genai.tenant.acme.content-{tag}", f"genai.tenant.beta.content-{tag}"
    admin = AdminClient(broker.conf("admin"))
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in (own, other)]).values():
        fut.result(30)
    for topic in (own, other, T.content):
        assert _produce(broker, "admin", topic) is None
    plain = {**acme, "log_level": 0}
    assert _read(broker, plain, own, "tenant-acme.reader") == "read"
    assert _read(broker, plain, other, "tenant-acme.reader") in DENIED
    assert _read(broker, plain, T.content, "tenant-acme.reader") in DENIED  # every tenant's finals: no
    assert _read(broker, plain, own, "tenant-beta.reader") in DENIED  # nor another tenant's group
    for topic in (T.control, T.prompts, T.results, other):
        assert _produce(broker, "", topic, {**plain, "message.timeout.ms": 8000}) in DENIED, topic


def test_bad_principal_and_secret_hygiene(broker):
    out = broker.rscf("credentials", "kafka", "root", timeout=60)
    assert out.returncode == 2 and "unknown kafka principal" in out.stderr
    secrets = broker.data / "secrets" / "kafka"
    assert (secrets.stat().st_mode & 0o777) == 0o700
    for f in secrets.iterdir():
        assert (f.stat().st_mode & 0o777) == 0o600
    assert ((broker.data / "kafka" / "server.properties").stat().st_mode & 0o777) == 0o600
    logs = "".join(p.read_text(errors="replace") for p in (broker.data / "logs").glob("*.log"))
    for principal in ks.fixed_principals():
        assert ks.password(principal, broker.data) not in logs, principal


def test_a_grant_the_table_does_not_have_is_removed(broker):
    """`rscf up` / `rscf credentials` make the broker's ACLs the table's: a stray grant goes."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                       ResourcePatternType, ResourceType)

    stray = AclBinding(ResourceType.TOPIC, T.control, ResourcePatternType.LITERAL, "User:worker-echo", "*",
                       AclOperation.WRITE, AclPermissionType.ALLOW)
    admin = AdminClient(broker.conf("admin"))  # kept until the answer: a dropped client cancels its futures
    for fut in admin.create_acls([stray]).values():
        fut.result(30)
    assert _eventually(lambda: _produce(broker, "worker-echo", T.control) is None)  # the stray grant works...
    out = broker.rscf("credentials", "kafka", "worker-echo", timeout=60)
    assert out.returncode == 0, out.stderr
    # ... until the table is applied again
    assert _eventually(lambda: _produce(broker, "worker-echo", T.control) in DENIED)


def _eventually(check, timeout_s: float = 20.0) -> bool:
    """ACL changes reach the broker's authorizer through the metadata log: a moment after the call."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
