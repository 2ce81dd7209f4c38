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
        from rscf.settings import SETTINGS

        print(f"stack healthy in {result['seconds']} s")
        _print_table(states)
        print(f"\nFlink Web UI: {SETTINGS.flink_url}   Prometheus: {SETTINGS.prometheus_url} (user admin: "
              "rscf credentials prometheus)   stop: rscf down")
    _warn_stale_jobs()
    return EXIT_OK


def _warn_stale_jobs() -> None:
    """A job the JobManager recovered keeps the job graph it was submitted with: say so if the code moved on."""
    from deploy.local import flink_jobs

    try:
        stale = flink_jobs.stale_jobs(flink_jobs.jobs())
    except Exception:  # noqa: BLE001 - only a hint; `up` itself succeeded
        return
    for job in stale:
        print(f"warning: {job.name} ({job.job_id}) {flink_jobs.STALE_ADVICE}", file=sys.stderr)


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _print_table(states) -> None:
    """Health, supervisord's state of the program, PID, memory, restarts (exits it did not ask for), uptime."""
    print(f"{'service':<18} {'health':<9} {'supervisor':<12} {'pid':>7} {'rss MB':>7} {'restarts':>8} "
          f"{'uptime':>7}  where / log")
    for s in states:
        health = "healthy" if s.healthy else ("unhealthy" if s.running else "down")
        rss = f"{s.rss_mb:.0f}" if s.rss_mb is not None else "-"
        print(f"{s.name:<18} {health:<9} {s.state:<12} {s.pid or '-':>7} {rss:>7} {s.restarts:>8} "
              f"{_uptime(s.uptime_s):>7}  {s.url}")
        print(f"{'':<68}log: {s.log}")
    if any(s.state == "FATAL" for s in states):
        print("\nFATAL: the program kept exiting right after its start and supervisord gave up; "
              "see its log, then `rscf up` starts it again.")
    if any(s.state == "UNSUPERVISED" for s in states):
        print("\nUNSUPERVISED: running, but nothing restarts it if it dies (started before supervision, "
              "or its supervisord is gone): `rscf down` then `rscf up`.")


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
    p = sub.add_parser("status", parents=[json_parent()],
                       help="health, supervisor state, PID, memory, restarts, uptime and log of each service")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("down", parents=[json_parent()],
                       help="stop the services `up` started (reverse order), then their supervisord")
    p.set_defaults(func=cmd_down)
