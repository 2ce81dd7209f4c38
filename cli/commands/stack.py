"""`rscf up|down|status`: the local stack's lifecycle."""

from __future__ import annotations

import argparse
import json
import sys

from cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent


def _say(args: argparse.Namespace):
    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr if args.json else sys.stdout, flush=True)

    return progress


def cmd_up(args: argparse.Namespace) -> int:
    from deploy.local import stack
    from deploy.local.processes import StackError

    try:
        result = stack.up(_say(args), only=args.only)
    except StackError as exc:
        print(f"rscf up failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    states = stack.status()
    if args.json:
        print(json.dumps({**result, "services": [s.__dict__ for s in states]}))
    else:
        print(f"stack healthy in {result['seconds']} s")
        _print_table(states)
        print("\nFlink Web UI: http://127.0.0.1:8081   Prometheus: http://127.0.0.1:9090   stop: rscf down")
    return EXIT_OK


def _print_table(states) -> None:
    print(f"{'service':<18} {'state':<9} {'pid':>7} {'rss MB':>7}  where / log")
    for s in states:
        state = "healthy" if s.healthy else ("starting" if s.running else "down")
        rss = f"{s.rss_mb:.0f}" if s.rss_mb is not None else "-"
        print(f"{s.name:<18} {state:<9} {s.pid or '-':>7} {rss:>7}  {s.url}")
        print(f"{'':<45}log: {s.log}")


def cmd_status(args: argparse.Namespace) -> int:
    from deploy.local import stack

    states = stack.status()
    if args.json:
        total = sum(s.rss_mb or 0 for s in states)
        print(json.dumps({"services": [s.__dict__ for s in states], "total_rss_mb": round(total, 1)}))
    else:
        _print_table(states)
        print(f"total resident memory: {sum(s.rss_mb or 0 for s in states):.0f} MB")
    return EXIT_OK if all(s.healthy for s in states) else EXIT_UNAVAILABLE


def cmd_down(args: argparse.Namespace) -> int:
    from deploy.local import stack

    stopped = stack.down(_say(args))
    if args.json:
        print(json.dumps({"stopped": stopped}))
    else:
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", parents=[json_parent()], help="install-checked start of the local stack (idempotent)")
    p.add_argument("--only", nargs="+", help="start only these services")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("status", parents=[json_parent()], help="health, PID, memory and log of each service")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("down", parents=[json_parent()], help="stop exactly the processes `up` started")
    p.set_defaults(func=cmd_down)
