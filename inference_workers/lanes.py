"""Priority lanes on the worker side: a pool's lane topics exist before its lane consumers subscribe.

The lanes themselves are named in rscf/settings.py (Topics.lane); kafka_io.py reads them.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def ensure_lane_topics(bootstrap: str, base: str, topics: tuple[str, ...], principal: str = "admin") -> None:
    """Create missing lane topics with the base topic's partition count (older stacks, test topics)."""
    from confluent_kafka.admin import AdminClient

    from rscf.kafka_clients import create_topics

    try:
        from rscf.kafka_clients import client_security

        md = AdminClient({"bootstrap.servers": bootstrap, **client_security(principal)}).list_topics(timeout=10)
        base_meta = md.topics.get(base)
        parts = len(base_meta.partitions) if base_meta is not None and base_meta.partitions else None
        missing = [t for t in topics if t not in md.topics]
        if missing:
            create_topics(missing, partitions=parts, bootstrap=bootstrap, principal=principal)
    except Exception as exc:  # noqa: BLE001 - the consumer still serves the lanes that exist
        log.warning("could not create lane topics %s: %s", topics, exc)
