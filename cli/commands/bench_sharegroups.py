"""`rscf bench sharegroups`: Kafka share groups vs classic consumer groups for the worker pools (issue #15,
item 4), on a private Kafka 4.4.0 broker; the measuring is in tools/sharegroup_bench.py."""

from __future__ import annotations

import argparse
import json
import sys

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent


def cmd_sharegroups(args: argparse.Namespace) -> int:
    from tools.sharegroup_bench import Plan, run, table

    if args.replicas < 2 or args.rate <= 0 or args.duration <= 0 or args.batch < 1 or args.kill_rate <= 0:
        print("--replicas >= 2, --rate/--kill-rate/--duration > 0, --batch >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        lingers = tuple(float(x) for x in args.lingers.split(",") if x)
    except ValueError:
        print("--lingers wants comma-separated milliseconds", file=sys.stderr)
        return EXIT_BAD_INPUT
    plan = Plan(replicas=args.replicas, rate=args.rate, duration_s=args.duration, item_ms=args.item_ms,
                batch=args.batch, kill_rate=args.kill_rate, lingers=lingers)
    say = (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    try:
        out = run(plan, only=args.only, say=say, keep=args.keep)
    except ValueError as exc:  # --only matches no arm
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:  # no Maven or Java, the private broker did not start
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(out) if args.json else table(out))
    return EXIT_OK if all(r["lost"] == 0 for r in out["arms"]) else EXIT_FAILED


def register_bench(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("sharegroups", parents=[json_parent()],
                        help="Kafka share groups vs classic consumer groups, N replicas on P partitions "
                             "(private Kafka 4.4.0 broker)")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--rate", type=float, default=150.0, help="requests/s offered in the spread arms")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per arm")
    p.add_argument("--item-ms", type=float, default=20.0, help="simulated model time per request")
    p.add_argument("--batch", type=int, default=1, help="records per poll (share: max.poll.records)")
    p.add_argument("--kill-rate", type=float, default=60.0, help="requests/s in the SIGKILL arms")
    p.add_argument("--lingers", default="100,1000", help="producer linger.ms of the extra share arms on 1 partition")
    p.add_argument("--only", default=None, help="only arms whose name contains this (classic, share, kill, linger, p1, ...)")
    p.add_argument("--keep", action="store_true", help="keep the broker's data dir and the replicas' logs")
    p.set_defaults(func=cmd_sharegroups)
