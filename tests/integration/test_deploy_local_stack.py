"""The local stack (deploy/local): every service real, reached with the clients the pipeline uses."""

from __future__ import annotations

import io
import time
import uuid

import httpx
import psutil
import pytest

from rscf.kafka_clients import client_security

pytestmark = pytest.mark.integration


def test_kafka_produce_consume(stack):
    from confluent_kafka import Consumer, Producer

    from rscf.kafka_clients import create_topics

    topic = f"test.platform.{uuid.uuid4().hex[:8]}"
    create_topics([topic], partitions=1)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, **client_security(), "acks": "all"})
    payloads = [f"message-{i}".encode() for i in range(5)]
    for p in payloads:
        producer.produce(topic, value=p, key=b"k")
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": stack.kafka_bootstrap, **client_security(), "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < len(payloads) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg.value())
    consumer.close()
    assert got == payloads


def test_registry_avro_round_trip(stack):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = f"test.platform.avro.{uuid.uuid4().hex[:8]}"
    schema = (
        '{"type":"record","name":"Ping","namespace":"io.rscf.test",'
        '"fields":[{"name":"id","type":"string"},{"name":"n","type":"int"}]}'
    )
    from rscf.registry_security import client_auth

    # a new subject: registering it takes a registry token (README "Schema registry")
    client = SchemaRegistryClient({"url": stack.registry_url, "timeout": 10, **client_auth("platform-test")})
    ser = AvroSerializer(client, schema)
    de = AvroDeserializer(client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    data = ser({"id": "a", "n": 7}, ctx)
    assert data[0] == 0  # Confluent wire format: magic byte, then the 4-byte schema id
    assert de(data, ctx) == {"id": "a", "n": 7}
    assert f"{topic}-value" in client.get_subjects()


def test_object_store_put_get_list(stack):
    from rscf.s3 import s3_client

    client = s3_client()
    key = f"tests/{uuid.uuid4().hex}.txt"
    body = b"hello object store"
    client.put_object(stack.buckets.artifacts, key, io.BytesIO(body), len(body), content_type="text/plain")
    assert client.get_object(stack.buckets.artifacts, key).read() == body
    listed = [o.object_name for o in client.list_objects(stack.buckets.artifacts, prefix="tests/")]
    assert key in listed
    client.remove_object(stack.buckets.artifacts, key)


def test_redis_round_trip_and_vector_sets(stack):
    from rscf import redis_security

    r = redis_security.client(redis_security.ADMIN)  # test keys: the admin (the ACLs: test_redis_acl.py)
    key = f"test:{uuid.uuid4().hex}"
    r.set(key, "v", ex=60)
    assert r.get(key) == b"v"
    # Redis 8 vector sets serve the RAG index.
    vkey = f"test:vset:{uuid.uuid4().hex}"
    r.execute_command("VADD", vkey, "VALUES", 3, 1.0, 0.0, 0.0, "a")
    r.execute_command("VADD", vkey, "VALUES", 3, 0.0, 1.0, 0.0, "b")
    nearest = r.execute_command("VSIM", vkey, "VALUES", 3, 0.9, 0.1, 0.0, "COUNT", 1)
    assert nearest[0] in (b"a", "a")
    r.delete(key, vkey)


def test_flink_has_taskmanager_with_free_slots(stack):
    overview = httpx.get(f"{stack.flink_url}/overview", timeout=5).json()
    assert overview["taskmanagers"] >= 1
    assert overview["slots-total"] >= 1
    tms = httpx.get(f"{stack.flink_url}/taskmanagers", timeout=5).json()["taskmanagers"]
    assert tms and all(tm["freeSlots"] >= 0 for tm in tms)
    assert sum(tm["freeSlots"] for tm in tms) >= 1


def test_prometheus_scrapes_the_stack(stack):
    """Prometheus itself, the object store, and Flink (pushed through the loopback Pushgateway) are up."""
    from rscf.monitoring_security import prometheus_auth

    auth = prometheus_auth()
    deadline = time.monotonic() + 40
    up, tms = {}, []
    while time.monotonic() < deadline:
        targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", auth=auth, timeout=5).json()["data"][
            "activeTargets"]
        up = {t["labels"]["job"]: t["health"] for t in targets}
        q = httpx.get(
            f"{stack.prometheus_url}/api/v1/query",
            params={"query": "max(flink_jobmanager_numRegisteredTaskManagers)"},
            auth=auth,
            timeout=5,
        ).json()["data"]["result"]
        tms = [float(r["value"][1]) for r in q]
        if all(up.get(j) == "up" for j in ("prometheus", "seaweedfs", "flink")) and tms and tms[0] >= 1:
            break
        time.sleep(1)
    assert {j: up.get(j) for j in ("prometheus", "seaweedfs", "flink")} == {
        "prometheus": "up",
        "seaweedfs": "up",
        "flink": "up",
    }
    assert tms and tms[0] >= 1, "Flink's metrics did not reach Prometheus"


def test_every_stack_socket_listens_on_loopback_only(stack):
    """Every service and supervisord itself (its control socket is a unix socket, owner only)."""
    import stat

    from deploy.local import stack as local_stack
    from deploy.local import supervision

    exposed = []
    supervisord = local_stack.supervisord_pid()
    assert supervisord is not None
    sock = supervision.layout().socket
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o700
    for pid in [supervisord, *local_stack.stack_pids()]:
        proc = psutil.Process(pid)
        for p in [proc] + proc.children(recursive=True):
            for conn in p.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and not conn.laddr.ip.startswith(("127.", "::1", "::ffff:127.")):
                    exposed.append((p.name(), conn.laddr))
    assert exposed == []


def test_status_reports_every_service_healthy(stack):
    from deploy.local import stack as local_stack
    from deploy.local.services import SERVICES

    states = local_stack.status()
    assert {s.name for s in states} == {s.name for s in SERVICES}
    assert all(s.healthy for s in states), [(s.name, s.healthy) for s in states]


def test_idle_stack_fits_in_3_gib(idle_stack_memory):
    """Measured when the session started the stack (or found it) with no job and no worker running."""
    if not idle_stack_memory["idle"]:
        pytest.skip("the stack was already busy (a job or workers running) when the session began")
    per_service = idle_stack_memory["rss_mb"]
    assert all(v > 0 for v in per_service.values()), per_service
    assert sum(per_service.values()) < 3 * 1024, per_service


def test_up_is_idempotent(stack):
    from deploy.local import stack as local_stack

    before = local_stack.stack_pids(), local_stack.supervisord_pid()
    result = local_stack.up()
    assert result["started"] == []
    assert (local_stack.stack_pids(), local_stack.supervisord_pid()) == before


@pytest.fixture
def table_restored(stack):
    """A test that swaps the service table leaves the stack's supervisord config as `up` writes it.

    Ask for it before `monkeypatch`, so that it runs after the table is back."""
    yield
    from deploy.local import stack as local_stack

    local_stack.up()


def test_port_taken_gives_clear_error_and_no_half_start(stack, table_restored, tmp_path, monkeypatch):
    """A port held by a foreign process: the error names the service, nothing is left running."""
    import socket

    from deploy.local import stack as local_stack
    from deploy.local.processes import Service, StackError, recorded_process

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    svc = Service(
        "probe", (port,), lambda: ["sleep", "30"], lambda: True, "n/a", start_timeout_s=5
    )
    monkeypatch.setattr(local_stack, "SERVICES", (svc,))
    with pytest.raises(StackError, match=rf"probe: port {port}"):
        local_stack.up()
    blocker.close()
    assert recorded_process(svc.pid_file) is None


@pytest.mark.stack_lifecycle
def test_down_leaves_no_process_then_up_again(stack):
    from deploy.local import stack as local_stack
    from deploy.local.services import SERVICES

    pids = local_stack.stack_pids()
    assert len(pids) == len(SERVICES)
    supervisord = local_stack.supervisord_pid()
    family = set(pids) | {supervisord}
    for pid in pids:
        family |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    stopped = local_stack.down()
    assert {s.name for s in SERVICES} | {"supervisord"} <= set(stopped)
    assert local_stack.supervisord_pid() is None
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    # leave the machine as the session found it: the stack running
    local_stack.up()
    assert all(s.healthy for s in local_stack.status())
