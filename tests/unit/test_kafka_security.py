"""Kafka principals, ACLs and client settings as pure logic (the broker's answers: tests/integration/test_kafka_auth.py)."""

from __future__ import annotations

import pytest

from rscf import kafka_security as ks
from rscf.pools import POOLS
from rscf.settings import SETTINGS

T = SETTINGS.topics


def allowed(principal: str, resource: str, name: str, op: str) -> bool:
    """Kafka's matching of ALLOW bindings (LITERAL: equal; PREFIXED: starts with), no deny rules."""
    return any(a.resource == resource and a.operation == op
               and (a.name == name if a.pattern == "LITERAL" else name.startswith(a.name))
               for a in ks.acls_for(principal))


def test_only_the_job_writes_requests_and_finals():
    assert allowed("worker-echo", "TOPIC", T.dlq, "WRITE")  # a worker dead-letters what it cannot decode
    for topic in (T.requests("echo"), T.content, T.audit, T.content + ".it-1234"):
        assert allowed("job", "TOPIC", topic, "WRITE")
        for other in ("gateway", "controller", "worker-echo", "tenant-acme"):
            assert not allowed(other, "TOPIC", topic, "WRITE"), (other, topic)


def test_only_workers_write_results_and_only_their_own_requests_are_read():
    assert allowed("worker-echo", "TOPIC", T.results, "WRITE")
    assert not allowed("gateway", "TOPIC", T.results, "WRITE")
    assert not allowed("tenant-acme", "TOPIC", T.results, "WRITE")
    for pool in POOLS:
        for lane in T.lanes(T.requests(pool)) + (T.requests(pool) + ".it-1",):
            assert allowed(f"worker-{pool}", "TOPIC", lane, "READ")
            for other in POOLS:
                if other != pool:
                    assert not allowed(f"worker-{other}", "TOPIC", lane, "READ"), (other, lane)
    assert allowed("worker-echo", "GROUP", "rscf-workers-echo.high", "READ")
    assert not allowed("worker-echo", "GROUP", "rscf-workers-image", "READ")


def test_control_is_written_by_operators_only():
    assert not ks.acls_for("admin")  # super user in the broker's config
    assert allowed("gateway", "TOPIC", T.control, "WRITE")  # for operator keys it has checked
    for other in ("job", "controller", "worker-echo", "tenant-acme"):
        assert not allowed(other, "TOPIC", T.control, "WRITE")


def test_tenants_read_only_their_own_namespace():
    assert allowed("tenant-acme", "TOPIC", "genai.tenant.acme.content", "READ")
    assert not allowed("tenant-acme", "TOPIC", "genai.tenant.acme2.content", "READ")
    assert not allowed("tenant-acme", "TOPIC", "genai.tenant.beta.content", "READ")
    for shared in (T.content, T.prompts, T.results, T.audit, T.dlq, T.control, T.requests("echo")):
        assert not allowed("tenant-acme", "TOPIC", shared, "READ")
    assert allowed("tenant-acme", "GROUP", "tenant-acme.reader", "READ")
    assert not allowed("tenant-acme", "GROUP", "tenant-beta.reader", "READ")


def test_controller_only_describes():
    assert {a.operation for a in ks.acls_for("controller")} == {"DESCRIBE"}


def test_each_binding_once_and_names_checked():
    for p in ks.fixed_principals() + ("tenant-acme",):
        acls = ks.acls_for(p)
        assert len(acls) == len(set(acls))
    for bad in ("", "root", "Tenant-x", "tenant-", "a b", "x" * 70, "../admin"):
        with pytest.raises(ks.KafkaAuthError):
            ks.check_principal(bad)


def test_mode_follows_the_formatted_broker(tmp_path, monkeypatch):
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "scram")
    assert ks.auth_mode(tmp_path) == "scram"  # nothing formatted yet: what is asked for
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("x")
    assert ks.auth_mode(tmp_path) == "none"  # formatted before authentication existed
    (tmp_path / "kafka" / "auth_mode").write_text("scram\n")
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "none")
    assert ks.auth_mode(tmp_path) == "scram"  # the broker is what it is, whatever the shell says
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "kerberos")
    with pytest.raises(ks.KafkaAuthError):
        ks.requested_mode()


def test_client_settings_and_passwords(tmp_path, monkeypatch):
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "none")
    assert ks.librdkafka_security("job", tmp_path) == {}
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "scram")
    conf = ks.librdkafka_security("worker-echo", tmp_path)
    assert conf["sasl.username"] == "worker-echo" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert len(conf["sasl.password"]) >= 32 and conf["security.protocol"] == "SASL_PLAINTEXT"
    assert ks.librdkafka_security("worker-echo", tmp_path) == conf  # generated once
    assert ks.password_file("worker-echo", tmp_path).stat().st_mode & 0o777 == 0o600
    assert ks.librdkafka_security("job", tmp_path)["sasl.password"] != conf["sasl.password"]
    monkeypatch.setenv("RSCF_KAFKA_PRINCIPAL", "admin")
    monkeypatch.setenv("RSCF_KAFKA_PASSWORD", "given")
    assert ks.credential("job") == ("admin", "given")  # a process handed its own credential uses it


def test_flink_options_use_the_connectors_shaded_login_module(monkeypatch, tmp_path):
    monkeypatch.setenv("RSCF_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(ks, "auth_mode", lambda data=None: "scram")
    monkeypatch.setattr(ks, "password", lambda principal, data=None: "pw")
    opts = ks.flink_security("job")
    assert opts["properties.sasl.jaas.config"] == (
        'org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule required '
        'username="job" password="pw";')
    from jobs.config import JobConfig
    from jobs.content_pipeline import sink_ddl

    ddl = sink_ddl("s", ["t"], JobConfig(), transactional=True)
    assert "'properties.sasl.mechanism' = 'SCRAM-SHA-512'" in ddl and 'password="pw"' in ddl


def test_a_client_without_a_local_broker_assumes_none_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("RSCF_KAFKA_AUTH", raising=False)
    assert ks.auth_mode(tmp_path) == "none"  # e.g. a worktree's CLI against another data dir's broker
    assert ks.requested_mode("scram") == "scram"  # what a new broker is formatted with by default
