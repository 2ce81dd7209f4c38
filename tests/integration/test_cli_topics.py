"""`rscf topics partitions` against the real broker: grows every lane of a (private) pool topic,
never shrinks, says which topic is missing."""

from __future__ import annotations

import json
import socket
import uuid

import pytest

from cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from rscf.kafka_clients import create_topics, delete_topics, partition_counts
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration


@pytest.fixture()
def kafka(request):
    """The stack's Kafka: the running one, else the stack brought up by the suite's fixture."""
    with socket.socket() as s:
        s.settimeout(1.0)
        if s.connect_ex((SETTINGS.host, SETTINGS.ports.kafka)) != 0:
            request.getfixturevalue("stack")
    return SETTINGS.kafka_bootstrap


@pytest.fixture()
def base(kafka):
    name = f"{SETTINGS.topics.request_prefix}topics-{uuid.uuid4().hex[:10]}"
    lanes = SETTINGS.topics.lanes(name)
    create_topics(lanes, 1)
    yield name
    delete_topics(lanes)


def test_grow_every_lane_then_refuse_to_shrink(base, capsys):
    lanes = SETTINGS.topics.lanes(base)
    assert main(["topics", "partitions", "--requests-topic", base, "--count", "3", "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["pools"][0]["lanes"] == {t: 3 for t in lanes}
    assert sorted(out["pools"][0]["grown"]) == sorted(lanes)
    assert partition_counts(lanes) == {t: 3 for t in lanes}

    assert main(["topics", "partitions", "--requests-topic", base, "--count", "2"]) == EXIT_BAD_INPUT
    assert "cannot remove partitions" in capsys.readouterr().err
    assert partition_counts(lanes) == {t: 3 for t in lanes}

    # already there: nothing to grow, still ok
    assert main(["topics", "partitions", "--requests-topic", base, "--count", "3", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["pools"][0]["grown"] == []


def test_a_missing_lane_is_named_and_nothing_is_created(kafka, capsys):
    base = f"{SETTINGS.topics.request_prefix}topics-missing-{uuid.uuid4().hex[:10]}"
    assert main(["topics", "partitions", "--requests-topic", base, "--count", "2"]) == EXIT_BAD_INPUT
    assert "no such topic" in capsys.readouterr().err
    assert set(partition_counts(SETTINGS.topics.lanes(base)).values()) == {None}
