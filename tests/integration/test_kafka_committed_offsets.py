"""Reading a group's committed offsets while its broker shuts down, on a private broker of the stack's Kafka.

Why: `AdminClient.list_consumer_group_offsets` segfaults librdkafka 2.16 when an OffsetFetch answers
NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE (it asks the admin's absent consumer group to look for the
coordinator again), which a broker's controlled shutdown produces. The pool controller and the backfill pacer
poll lag through Kafka restarts, so they crashed (dmesg: "rdk:main ... segfault at 58 ... librdkafka").
`rscf.kafka_clients.committed_offsets` reads through a consumer handle of the group instead. Each poller
runs in its own process (a segfault would take pytest down with it); the broker is stopped by its PID.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time

import pytest

from rscf.settings import SETTINGS
from tools.private_kafka import PrivateBroker, jars_dir

pytestmark = pytest.mark.integration

POLLER = textwrap.dedent("""
    import sys, time
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient
    from rscf.kafka_clients import admin_from_config, committed_offsets
    bootstrap, how = sys.argv[1], sys.argv[2]
    tps = [TopicPartition("t", p) for p in range(4)]
    plain, ours = AdminClient({"bootstrap.servers": bootstrap}), admin_from_config({"bootstrap.servers": bootstrap})
    seen, end = 0, time.monotonic() + 20
    while time.monotonic() < end:
        try:
            if how == "list_consumer_group_offsets":
                for f in plain.list_consumer_group_offsets([ConsumerGroupTopicPartitions("g", tps)],
                                                           request_timeout=2).values():
                    seen = max(seen, sum(tp.offset for tp in f.result(2).topic_partitions))
            else:
                seen = max(seen, sum(committed_offsets(ours, "g", tps, 2).values()))
        except Exception:  # the broker going away: errors are expected, a crash is not
            pass
        time.sleep(0.002)
    print("committed", seen, flush=True)
""")


@pytest.fixture()
def broker(tmp_path):
    if not (jars_dir(SETTINGS.versions.kafka) / f"kafka_2.13-{SETTINGS.versions.kafka}.jar").exists():
        pytest.skip("the stack's Kafka jars are not installed (make test installs them)")
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    b = PrivateBroker(tmp_path, version=SETTINGS.versions.kafka).start()
    try:
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        admin.create_topics([NewTopic("t", 4, 1)])["t"].result(20)
        producer = Producer({"bootstrap.servers": b.bootstrap})
        for i in range(40):
            producer.produce("t", b"x", partition=i % 4)
        producer.flush(20)
        consumer = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "g", "enable.auto.commit": False})
        consumer.assign([TopicPartition("t", p, 0) for p in range(4)])
        read, deadline = 0, time.monotonic() + 30
        while read < 40 and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and msg.error() is None:
                read += 1
                consumer.commit(msg, asynchronous=False)
        consumer.close()
        assert read == 40
        yield b
    finally:
        b.stop()


def _poll_through_shutdown(b: PrivateBroker, how: str) -> subprocess.CompletedProcess:
    poller = subprocess.Popen([sys.executable, "-c", POLLER, b.bootstrap, how], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=SETTINGS.paths.repo,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))  # no core file
    time.sleep(4)  # it reads the offsets while the broker is up
    b.stop()  # SIGTERM: a controlled shutdown, the group coordinator resigns under the poller
    out, _ = poller.communicate(timeout=60)
    return subprocess.CompletedProcess(poller.args, poller.returncode, out)


def test_committed_offsets_survive_a_broker_shutting_down_under_them(broker):
    done = _poll_through_shutdown(broker, "committed_offsets")
    assert done.returncode == 0, f"the poller died with {done.returncode}"
    assert "committed 40" in done.stdout  # it read the real offsets before the broker went


def test_the_admin_call_it_replaces_is_the_one_that_crashes(broker):
    """Documents the librdkafka bug the reader avoids; when a librdkafka release fixes it this test fails and
    `committed_offsets` may go back to the admin call."""
    done = _poll_through_shutdown(broker, "list_consumer_group_offsets")
    assert done.returncode == -11, f"the admin call survived ({done.returncode}): librdkafka fixed?"
