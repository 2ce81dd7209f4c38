"""The broker's CHAOS listener (`rscf chaos` kafka-latency/-partition, README "Fault matrix"): a client that
bootstraps on it is sent to the fault proxy's port for everything after, so Toxiproxy sees all its traffic;
it takes the same SCRAM credentials as the plain listener, and the plain listener still advertises itself."""

from __future__ import annotations

import pytest

from rscf import kafka_clients
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration

H, P = SETTINGS.host, SETTINGS.ports


def _advertised(bootstrap: str) -> set[tuple[str, int]]:
    admin = kafka_clients.admin_client(bootstrap=bootstrap)
    brokers = admin.list_topics(timeout=15).brokers
    return {(b.host, b.port) for b in brokers.values()}


@pytest.mark.skipif(SETTINGS.kafka_auth.tls, reason="the chaos listener is a plain (SASL_PLAINTEXT) one")
def test_the_chaos_listener_advertises_the_fault_proxy_and_the_plain_one_itself(stack):
    assert _advertised(f"{H}:{P.kafka_chaos}") == {(H, P.kafka_chaos_proxy)}
    assert _advertised(f"{H}:{P.kafka}") == {(H, P.kafka)}


def test_the_chaos_listener_refuses_a_client_without_credentials(stack):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from rscf import kafka_security

    if kafka_security.auth_mode() == kafka_security.NONE:
        pytest.skip("a broker without authentication asks for none")
    admin = AdminClient({"bootstrap.servers": f"{H}:{P.kafka_chaos}"})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
