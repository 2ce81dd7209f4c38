"""The broker's TLS listener as rendered into server.properties, its PEM key store, and the client
settings of the TLS listener (no broker started: tests/integration/test_kafka_tls.py does that)."""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local import kafka_broker
from rscf import kafka_security as ks
from rscf.secrets import mode_of
from rscf.settings import SETTINGS

H, P = SETTINGS.host, SETTINGS.ports


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_the_tls_port_is_its_own():
    assert len({P.kafka, P.kafka_controller, P.kafka_tls, P.kafka_chaos, P.kafka_chaos_proxy}) == 5


def test_scram_broker_adds_a_sasl_ssl_listener_and_keeps_the_plaintext_one(data):
    store = kafka_broker.ensure_tls_store()
    props = _props(kafka_broker._kafka_listeners(ks.SCRAM, store))
    assert props["listeners"] == (f"SASL_PLAINTEXT://{H}:{P.kafka},SASL_SSL://{H}:{P.kafka_tls},"
                                  f"CONTROLLER://{H}:{P.kafka_controller},CHAOS://{H}:{P.kafka_chaos}")
    # the fault matrix's listener advertises the fault proxy's port, and asks for SCRAM as the plain one does
    assert props["advertised.listeners"] == (f"SASL_PLAINTEXT://{H}:{P.kafka},SASL_SSL://{H}:{P.kafka_tls},"
                                             f"CHAOS://{H}:{P.kafka_chaos_proxy}")
    assert {"SASL_SSL:SASL_SSL", "CHAOS:SASL_PLAINTEXT"} <= set(props["listener.security.protocol.map"].split(","))
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"  # the broker's own link: unchanged
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"  # on both client listeners
    for listener in ("sasl_plaintext", "sasl_ssl", "chaos"):
        assert f"listener.name.{listener}.scram-sha-512.sasl.jaas.config" in props
    pre = "listener.name.sasl_ssl."
    assert props[pre + "ssl.keystore.type"] == props[pre + "ssl.truststore.type"] == "PEM"
    assert props[pre + "ssl.keystore.location"] == str(store.keystore)
    assert props[pre + "ssl.truststore.location"] == str(data / "secrets" / "ca.pem")
    assert props[pre + "ssl.client.auth"] == "none"  # clients prove themselves with SCRAM, not certificates
    assert not any(k.startswith("listener.name.sasl_plaintext.ssl") for k in props)
    assert props["super.users"] == "User:admin" and props["allow.everyone.if.no.acl.found"] == "false"


def test_a_broker_without_authentication_gets_a_plain_ssl_listener(data):
    props = _props(kafka_broker._kafka_listeners(ks.NONE, kafka_broker.ensure_tls_store()))
    assert props["listeners"] == (f"PLAINTEXT://{H}:{P.kafka},SSL://{H}:{P.kafka_tls},"
                                  f"CONTROLLER://{H}:{P.kafka_controller},CHAOS://{H}:{P.kafka_chaos}")
    assert "CHAOS:PLAINTEXT" in props["listener.security.protocol.map"].split(",")
    assert props["listener.name.ssl.ssl.keystore.type"] == "PEM"
    assert "sasl.enabled.mechanisms" not in props


def test_the_key_store_holds_a_server_certificate_of_the_stacks_ca_for_127_0_0_1_and_localhost(data):
    store = kafka_broker.ensure_tls_store()
    assert mode_of(store.keystore) == 0o600 and mode_of(ks.tls_dir()) == 0o700
    pem = store.keystore.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and pem.count("BEGIN CERTIFICATE") == 2
    leaf = x509.load_pem_x509_certificate((ks.tls_dir() / "broker.pem").read_bytes())
    ca = x509.load_pem_x509_certificate(ks.ca_file().read_bytes())
    assert leaf.issuer == ca.subject
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [SETTINGS.host]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    # what a client does: verify the chain against ca.pem (Python's ssl here, librdkafka's OpenSSL there)
    ctx = ssl.create_default_context(cafile=str(ks.ca_file()))
    ctx.load_cert_chain(str(store.keystore))  # key and chain parse as one PEM file
    again = kafka_broker.ensure_tls_store()
    assert (ks.tls_dir() / "broker.pem").read_bytes() == leaf.public_bytes(Encoding.PEM)  # not reissued
    assert again == store


def test_client_settings_of_the_tls_listener(data, monkeypatch):
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "scram")
    plain = ks.librdkafka_security("job", data, tls=False)
    assert plain["security.protocol"] == "SASL_PLAINTEXT" and "ssl.ca.location" not in plain
    tls = ks.librdkafka_security("job", data, tls=True)
    assert tls["security.protocol"] == "SASL_SSL" and tls["sasl.password"] == plain["sasl.password"]
    assert tls["ssl.ca.location"] == str(data / "secrets" / "ca.pem")
    assert tls["ssl.endpoint.identification.algorithm"] == "https"  # host name verified, not only the chain
    java = ks.java_security("admin", tls=True)
    assert java["ssl.truststore.type"] == "PEM" and java["ssl.truststore.location"] == str(ks.ca_file())
    assert java["security.protocol"] == "SASL_SSL"
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "none")
    assert ks.librdkafka_security("job", data, tls=True)["security.protocol"] == "SSL"
    assert ks.librdkafka_security("job", data, tls=False) == {}


def test_rscf_kafka_tls_moves_rscfs_own_clients_to_the_tls_listener(data, monkeypatch):
    monkeypatch.setenv("RSCF_KAFKA_AUTH", "scram")
    monkeypatch.delenv("RSCF_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("RSCF_KAFKA_TLS", raising=False)
    assert SETTINGS.kafka_bootstrap == f"{H}:{P.kafka}"
    assert ks.librdkafka_security("job", data)["security.protocol"] == "SASL_PLAINTEXT"
    monkeypatch.setenv("RSCF_KAFKA_TLS", "1")
    assert SETTINGS.kafka_bootstrap == f"{H}:{P.kafka_tls}"
    assert ks.librdkafka_security("job", data)["security.protocol"] == "SASL_SSL"
    monkeypatch.setattr(ks, "auth_mode", lambda data=None: "scram")
    opts = ks.flink_security("job")
    assert opts["properties.security.protocol"] == "SASL_SSL"
    assert opts["properties.ssl.truststore.type"] == "PEM"
    assert opts["properties.ssl.truststore.location"] == str(ks.ca_file())
