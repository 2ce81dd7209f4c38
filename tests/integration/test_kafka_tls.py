"""The broker's TLS listener on a real broker (issue #16 item 5).

A private broker of this test's own (its data dir, free loopback ports for the plaintext, controller and
TLS listeners, ``RSCF_KAFKA_AUTH=scram``) is started with the project's own `rscf up --only kafka`; the
client configs come from `rscf credentials kafka PRINCIPAL --tls --json|--java`, used as they are.
Refusals are checked by what the client reports (its error callback), not by a missing answer alone.
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

from deploy.local import installed
from rscf.kafka_clients import client_security
from rscf.settings import SETTINGS
from tools.harness import free_port_block

pytestmark = pytest.mark.integration

JAVA_CHECK = """
import java.io.FileReader;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
public class Check {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        p.load(new FileReader(a[0]));
        try (Admin admin = Admin.create(p)) {
            System.out.println("topics " + admin.listTopics().names().get(java.util.concurrent.TimeUnit.SECONDS.toMillis(30),
                                                                           java.util.concurrent.TimeUnit.MILLISECONDS));
        }
    }
}
"""


class Broker:
    def __init__(self, data: Path) -> None:
        self.data = data
        port = free_port_block(3, start=32_500, span=260)  # below the ephemeral range (test_kafka_auth)
        self.plain, self.tls = f"127.0.0.1:{port}", f"127.0.0.1:{port + 2}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RSCF_KAFKA")}
        self.env.update({"PYTHONPATH": str(SETTINGS.paths.repo), "RSCF_DATA_DIR": str(data),
                         "RSCF_KAFKA_AUTH": "scram", "RSCF_KAFKA_PORT": str(port),
                         "RSCF_KAFKA_CONTROLLER_PORT": str(port + 1), "RSCF_KAFKA_TLS_PORT": str(port + 2),
                         "RSCF_POOL_CONTROLLER": "off"})

    def rscf(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=SETTINGS.paths.repo, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def tls_conf(self, principal: str) -> dict:
        out = self.rscf("credentials", "kafka", principal, "--tls", "--json", timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    from deploy.local.processes import stop_recorded

    b = Broker(tmp_path_factory.mktemp("kafka-tls"))
    out = b.rscf("up", "--only", "kafka")
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        yield b
    finally:
        b.rscf("down", timeout=120)
        for pid_file in (b.data / "pids").glob("*.pid"):
            stop_recorded(pid_file)


def _round_trip(conf: dict, topic: str) -> tuple[str | None, bytes | None]:
    """(the producer's error or None, the value read back or None)."""
    from confluent_kafka import Consumer, Producer

    value = uuid.uuid4().hex.encode()
    p = Producer({**conf, "message.timeout.ms": 10_000})
    errors: list = []
    p.produce(topic, value=value, on_delivery=lambda err, msg: errors.append(err))
    p.flush(15)
    if not errors:
        return "NO_ANSWER", None
    if errors[0] is not None:
        return errors[0].name(), None
    c = Consumer({**conf, "group.id": f"tls-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() == value:
                return None, msg.value()
        return None, None
    finally:
        c.close()


def _refusal(conf: dict) -> str:
    """What the client reports when the broker cannot be used with ``conf`` ('' when it can)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    seen: list[str] = []
    admin = AdminClient({**conf, "error_cb": lambda err: seen.append(err.str())})
    try:
        admin.list_topics(timeout=6)
        return ""
    except KafkaException as exc:
        admin.poll(0.5)  # serve the error callbacks
        return " | ".join(seen) or str(exc)
    finally:
        del admin


def test_credentials_tls_config_produces_and_consumes_over_the_verified_tls_listener(broker):
    conf = broker.tls_conf("admin")
    assert conf["bootstrap.servers"] == broker.tls and conf["security.protocol"] == "SASL_SSL"
    assert conf["ssl.ca.location"] == str(broker.data / "secrets" / "ca.pem")
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    err, got = _round_trip(conf, f"tls.check.{uuid.uuid4().hex[:6]}")
    assert err is None and got is not None


def test_the_same_acls_apply_on_the_tls_listener(broker):
    conf = broker.tls_conf("tenant-acme")
    err, _ = _round_trip(conf, SETTINGS.topics.content)
    assert err is not None and "TOPIC_AUTHORIZATION_FAILED" in err


def test_a_client_that_does_not_trust_the_stacks_ca_fails_the_handshake(broker, tmp_path):
    from gateway.tls import ensure_ca

    ensure_ca(tmp_path / "other")  # another CA: the broker's certificate does not chain to it
    conf = {**broker.tls_conf("admin"), "ssl.ca.location": str(tmp_path / "other" / "ca.pem")}
    refusal = _refusal(conf)
    assert "SSL handshake failed" in refusal and "certificate verify failed" in refusal, refusal


def test_a_wrong_password_is_refused_on_the_tls_listener(broker):
    conf = {**broker.tls_conf("admin"), "sasl.password": "not-the-password"}
    refusal = _refusal(conf)
    assert "Authentication failed" in refusal or "invalid credentials" in refusal, refusal


def test_a_plaintext_client_is_not_served_on_the_tls_listener(broker):
    conf = {"bootstrap.servers": broker.tls, **client_security("admin", data=broker.data, tls=False)}
    assert _refusal(conf)


def test_plaintext_clients_still_work_on_the_first_listener(broker):
    conf = {"bootstrap.servers": broker.plain, **client_security("admin", data=broker.data, tls=False)}
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    err, got = _round_trip(conf, f"plain.check.{uuid.uuid4().hex[:6]}")
    assert err is None and got is not None


def test_a_java_client_takes_the_java_tls_properties_as_they_are(broker, tmp_path):
    out = broker.rscf("credentials", "kafka", "admin", "--tls", "--java", timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ssl.truststore.type=PEM" in out.stdout
    (tmp_path / "client.properties").write_text(out.stdout)
    (tmp_path / "Check.java").write_text(JAVA_CHECK)
    run = subprocess.run(["java", "-cp", f"{installed.kafka_jars()}/*", str(tmp_path / "Check.java"),
                          str(tmp_path / "client.properties")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "topics" in run.stdout, run.stdout[-1500:] + run.stderr[-1500:]
