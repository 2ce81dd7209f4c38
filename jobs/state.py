"""The job's Flink state descriptors: the broadcast control state and the orchestrator's per-request slot.

Their names are part of every savepoint: renaming one loses that state on restore.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from rscf.settings import SETTINGS

CONTROL_STATE = "control"  # broadcast MapState, keys and values: `jobs.intake.control_updates`


def control_descriptor() -> MapStateDescriptor:
    return MapStateDescriptor(CONTROL_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())


def slot_descriptor() -> ValueStateDescriptor:
    """The orchestrator's per-request state; a finished request's tombstone expires by state TTL.

    TTL (dedup_ttl_ms, refreshed on every write) replaces a cleanup timer per request:
    in-flight slots are written at every attempt and their own timers fire long before.

    The default background cleanup cannot be used in thread mode: PyFlink builds its RocksDB
    compaction-filter default with a py4j `Duration` and the TaskManager has no gateway
    (measured: FileNotFoundError launching one, the job never starts). The heap backend's
    incremental cleanup is named explicitly instead.
    """
    desc = ValueStateDescriptor("pending_request", Types.PICKLED_BYTE_ARRAY())
    desc.enable_time_to_live(
        StateTtlConfig.new_builder(Time.milliseconds(SETTINGS.limits.dedup_ttl_ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_incrementally(2, False)  # 3 state accesses per request: keeps pace with 1 tombstone each
        .build())
    return desc
