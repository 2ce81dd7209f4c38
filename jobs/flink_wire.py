"""Wire rows between the job's Flink functions, and the control-event intake (`jobs.flink_functions`).

Split from `jobs.flink_functions` to keep each module readable (issue #14 added the gate's
micro-batches there); `jobs.flink_functions` re-exports these names.
"""

from __future__ import annotations

import pickle
from typing import Any

from pyflink.common import Row
from pyflink.datastream.functions import FlatMapFunction, RuntimeContext

from jobs import intake
from jobs.clients import topic_serde
from jobs.config import JobConfig
from jobs.envelopes import request_key
from jobs.failures import failure_dead_letter
from jobs.metrics import Counters

NEXT, SINK = "next", "sink"  # tags of the control stream only (its events and its dead letters part ways)

# ----------------------------------------------------------------------------- wire rows


def wire(key: str, envelope: Any) -> Row:
    """An envelope for the orchestrator, in the row type of the results source (`content_pipeline.WIRE`).

    Row(key, Row(kafka key, value, topic, partition, offset)): results arrive in this shape
    straight from Kafka (topic set), envelopes from the gate pickled in `value` (topic None).
    Both inputs share one type so they can be unioned ahead of the Java keyBy.
    """
    return Row(key, Row(None, pickle.dumps(envelope, protocol=pickle.HIGHEST_PROTOCOL), None, None, None))


def is_next(value) -> bool:
    return value[0] == NEXT


def is_sink(value) -> bool:
    return value[0] == SINK


def payload(value):
    return value[1]


def wired_dead_letter(value) -> Row:
    return wire(request_key(value[1]), value[1])


# ----------------------------------------------------------------------------- intake


class ControlIntake(FlatMapFunction):
    """Control events, each with where it came from (`intake.SOURCE`); undecodable ones go to the dead-letter
    topic like any other input, and their position on to the gate (`jobs.policy_wait`)."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        self.serde = topic_serde(self.cfg, self.cfg.control, "control")
        self.counters = Counters(ctx)

    def flat_map(self, row):
        try:
            record, dl = intake.decode_or_dead_letter(row[0], self.serde.decode, row[1], row[2], row[3])
            if dl is None:
                record, dl = intake.checked_control(record, row[0], row[1], row[2], row[3])
        except Exception as exc:  # noqa: BLE001 - no control event can stop the job
            record, dl = None, failure_dead_letter(exc, "control", row[0], row[1], row[2], row[3])
        if dl is not None:
            self.counters.count_dead_letter(dl)
            yield SINK, dl
            yield NEXT, {intake.SOURCE: (row[2], row[3])}  # read all the same: the gate's start-up wait counts it
        else:
            self.counters.inc("control_events")
            yield NEXT, {**record, intake.SOURCE: (row[2], row[3])}
