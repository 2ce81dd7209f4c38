"""`rscf chaos`: the fault matrix (tools/chaos.py) against the running local stack.

Exit code 0 when every selected fault shows 0 missing and 0 duplicated, 1 otherwise; 2 for an
unknown fault; 3 when the stack is not reachable.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from jobs.config import DELIVERY_MODES


def _stack_reachable() -> str | None:
    """None when Kafka and the Flink JobManager answer, else what is missing."""
    import httpx
    from confluent_kafka.admin import AdminClient

    from deploy.local import flink_rest
    from rscf.kafka_clients import client_config
    from rscf.settings import SETTINGS

    try:
        if not AdminClient(client_config()).list_topics(timeout=5).brokers:
            return f"Kafka at {SETTINGS.kafka_bootstrap}"
    except Exception:  # noqa: BLE001
        return f"Kafka at {SETTINGS.kafka_bootstrap}"
    try:
        flink_rest.get("/overview", timeout=5).raise_for_status()
    except httpx.HTTPError:
        return f"Flink at {flink_rest.rest_url()}"
    return None


def _interrupt(signum, frame) -> None:
    print(f"rscf chaos: stopping on signal {signum}", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def cmd_chaos(args: argparse.Namespace) -> int:
    from tools import chaos
    from tools.faults import CI_FAULTS, FAULT_NAMES, catalogue

    if args.list:
        for name, fault in catalogue().items():
            print(f"{name:<20} {'[ci] ' if name in CI_FAULTS else ''}{fault.summary}")
        return EXIT_OK
    try:
        names = chaos.parse_faults(args.faults, FAULT_NAMES, CI_FAULTS)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    missing = _stack_reachable()
    if missing:
        print(f"error: {missing} is not reachable; start the stack with `rscf up`", file=sys.stderr)
        return EXIT_UNAVAILABLE

    out = sys.stderr if args.json else sys.stdout
    print(chaos.table_header(), file=out, flush=True)
    # `timeout` and CI runners stop with SIGTERM: unwind like Ctrl-C so the run's job, workers and topics go.
    signal.signal(signal.SIGTERM, _interrupt)
    rows: list[dict] = []

    def on_row(row: dict) -> None:
        rows.append(row)
        if args.out:  # rows so far, in case the run is interrupted
            Path(args.out).write_text(json.dumps({"faults": rows, "partial": True}, indent=2, default=str) + "\n")
        print(chaos.table_row(row), file=out, flush=True)
        for note in row.get("notes", []) + ([f"error: {row['error']}"] if row.get("error") else []):
            print(f"{'':<19}{note}", file=out, flush=True)

    result = chaos.run_matrix(names, rate=args.rate, duration_s=args.duration, workers=args.workers,
                              delivery=args.delivery, progress=not args.json and sys.stderr.isatty(), on_row=on_row)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(json.dumps(result, default=str))
    else:
        bad = [r["fault"] for r in result["faults"] if not r.get("passed")]
        print(f"\n{len(result['faults']) - len(bad)}/{len(result['faults'])} faults kept the promise "
              f"(0 missing, 0 duplicated) in {result['seconds']:.0f} s" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return EXIT_OK if result["passed"] else EXIT_FAILED


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", parents=[json_parent()],
                       help="fault matrix: inject faults one at a time under load, count lost and doubled finals")
    p.add_argument("--faults", default=None,
                   help="comma-separated fault names, `ci` for the reduced CI matrix (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the faults and exit")
    p.add_argument("--rate", type=float, default=50.0, help="prompts per second offered during each fault")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per fault (injected at 1/4)")
    p.add_argument("--workers", type=int, default=2, help="echo workers of the isolated pipeline")
    p.add_argument("--delivery", choices=("default", *DELIVERY_MODES), default="default",
                   help="the job's sink guarantee (default: what `rscf job start` uses)")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.set_defaults(func=cmd_chaos)
