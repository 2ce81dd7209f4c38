"""`rscf topics partitions`: the partitions of each pool's request lanes, and growing them.

A pool scales to at most as many replicas as its lanes have partitions (a classic consumer group
gives each partition to one member; more replicas would idle: `rscf bench sharegroups` measured it),
so scaling a pool past that is `rscf topics partitions --pool P --count N` plus a `max_replicas` of
at least N (rscf/pools.py, or the controller's `--max`). The controller reads the partitions every
tick: no restart needed.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.main import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.pools import POOLS, pool as pool_row
from rscf.settings import SETTINGS


def lanes_of(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """Pool (or base topic) -> its lane topics, highest priority first."""
    if args.requests_topic:
        return {args.requests_topic: SETTINGS.topics.lanes(args.requests_topic)}
    return {p: SETTINGS.topics.lanes(SETTINGS.topics.requests(p)) for p in (args.pool or POOLS)}


def cmd_partitions(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from rscf.kafka_clients import add_partitions, grow_plan, partition_counts

    pools = lanes_of(args)
    topics = [t for lanes in pools.values() for t in lanes]
    try:
        before = partition_counts(topics)
        grown: list[str] = []
        if args.count is not None:
            grown, errors = grow_plan(before, args.count)
            if errors:
                print("error: " + "; ".join(errors), file=sys.stderr)
                return EXIT_BAD_INPUT
            add_partitions(grown, args.count)
        after = partition_counts(topics) if grown else before
    except KafkaException as exc:
        print(f"kafka unreachable at {SETTINGS.kafka_bootstrap}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    rows = []
    for name, lanes in pools.items():
        max_replicas = pool_row(name).max_replicas if name in POOLS else None
        rows.append({"pool": name, "lanes": {t: after[t] for t in lanes}, "grown": [t for t in lanes if t in grown],
                     "max_replicas": max_replicas})
    if args.json:
        print(json.dumps({"pools": rows}))
    else:
        for r in rows:
            counts = ", ".join(f"{t} {n if n is not None else 'missing'}" for t, n in r["lanes"].items())
            cap = min([n for n in r["lanes"].values() if n] or [0])
            note = f"; replicas up to min(max_replicas {r['max_replicas']}, partitions {cap})" if r["max_replicas"] else ""
            print(f"{r['pool']:<12} {counts}{note}" + (f"  (grown: {len(r['grown'])} lanes)" if r["grown"] else ""))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    topics = sub.add_parser("topics", help="Kafka topics of the pipeline: partitions of the pools' request lanes")
    tsub = topics.add_subparsers(dest="topics", required=True)
    p = tsub.add_parser("partitions", parents=[json_parent()],
                        help="show (or --count N: grow) the partitions of each pool's HIGH/NORMAL/LOW lanes")
    p.add_argument("--pool", action="append", choices=POOLS, help="default: every pool")
    p.add_argument("--count", type=int, default=None, help="grow every lane to N partitions (never shrinks)")
    p.add_argument("--requests-topic", default=None, help="a base request topic instead of pools (tests)")
    p.set_defaults(func=cmd_partitions)
