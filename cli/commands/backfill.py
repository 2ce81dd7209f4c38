"""`rscf backfill start|status|stop|resume|list`: batch backfills from object storage through the pipeline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent


def _fail(exc: Exception) -> int:
    from deploy.local.flink_jobs import ClusterError
    from operators.backfill import BadInput

    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, (BadInput, KeyError, FileNotFoundError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, ClusterError) and exc.unavailable:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def _bar(s: dict) -> str:
    width = 30
    filled = int(width * min(s.get("fraction", 0.0), 1.0))
    rates = " ".join(f"{n.split('_')[1]} {s[n]:.0f}/s" for n in ("rows_read_per_s", "rows_dispatched_per_s",
                                                                  "rows_finished_per_s") if n in s)
    eta = f" ETA {s['eta_s']:.0f}s" if s.get("eta_s") is not None else ""
    live = " (yielding to live)" if s.get("yielding_to_live") else ""
    return (f"\r[{'#' * filled}{'.' * (width - filled)}] {s['done']}/{s['rows_total']} "
            f"({s['rows_dead']} dead) {s['job_state']} {rates}{eta}{live}   ")


def _watch(args: argparse.Namespace, backfill_id: str) -> dict:
    from deploy.local import backfill_progress

    def show(s: dict) -> None:
        if not args.json:
            print(_bar(s), end="", flush=True, file=sys.stderr)

    final = backfill_progress.watch(backfill_id, timeout_s=args.timeout or None, on_update=show)
    if not args.json:
        print(file=sys.stderr)
    return final


def _print(args: argparse.Namespace, data: dict) -> None:
    if args.json:
        print(json.dumps(data, default=str))
        return
    for key in ("backfill_id", "uri", "tenant", "state", "job_state", "job_id", "rows_total", "rows_finished",
                "rows_dead", "counts", "pace_rows_per_s", "yielding_to_live", "lane_lag_rows", "savepoint",
                "writer_running", "web_ui"):
        if key in data:
            print(f"{key:<15} {data[key]}")


def cmd_start(args: argparse.Namespace) -> int:
    from deploy.local import backfills
    from operators.backfill import BackfillSpec

    try:
        spec = BackfillSpec(args.uri, args.tenant, args.model_version, args.priority, args.format)
        features = args.features.split(",") if args.features is not None else None
        yielding = backfills.Yielding()
        if args.no_yield:  # the full budget even while the machine is busy or live prompts arrive
            yielding = dataclasses.replace(yielding, yield_busy=0.0, live_busy=0.0)
        data = backfills.start(spec, args.budget, start_lane=not args.no_lane, features=features, yielding=yielding)
        if args.wait:
            data = _watch(args, spec.backfill_id)
    except Exception as exc:  # noqa: BLE001 - mapped to exit codes
        return _fail(exc)
    _print(args, data)
    return EXIT_OK if not args.wait or data.get("state") == "FINISHED" else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from deploy.local import backfill_progress, backfills

    try:
        ids = [args.backfill_id] if args.backfill_id else backfills.known()
        if args.watch and args.backfill_id:
            data = _watch(args, args.backfill_id)
            _print(args, data)
            return EXIT_OK
        out = [backfill_progress.status(b) for b in ids]
    except Exception as exc:  # noqa: BLE001
        return _fail(exc)
    if args.json:
        print(json.dumps(out if not args.backfill_id else out[0], default=str))
    else:
        for s in out:
            print(_bar({**s}).strip("\r"))
            _print(args, s)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from deploy.local import backfills

    try:
        data = backfills.stop(args.backfill_id)
    except Exception as exc:  # noqa: BLE001
        return _fail(exc)
    _print(args, data)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from deploy.local import backfills

    try:
        data = backfills.resume(args.backfill_id, args.budget)
        if args.wait:
            data = _watch(args, args.backfill_id)
    except Exception as exc:  # noqa: BLE001
        return _fail(exc)
    _print(args, data)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backfill", help="batch backfills from object storage (bounded Flink job)")
    bsub = p.add_subparsers(dest="backfill_command", required=True)

    s = bsub.add_parser("start", parents=[json_parent()], help="plan and start a backfill of s3://BUCKET/PREFIX")
    s.add_argument("uri", help="s3://BUCKET/PREFIX: every file of --format under it (not _results/)")
    s.add_argument("--tenant", required=True)
    s.add_argument("--model-version", default=None, help="pin every pool to this version on the backfill lane")
    s.add_argument("--priority", default="LOW", choices=("LOW", "NORMAL", "HIGH"))
    s.add_argument("--format", default="jsonl", choices=("jsonl", "parquet", "avro"))
    s.add_argument("--budget", type=float, default=200.0,
                   help="rows/s: the backfill's budget on the lane (the ingest job reads no faster)")
    s.add_argument("--features", default=None,
                   help="comma-separated features of the tenant on the lane (default: its live policy's)")
    s.add_argument("--no-lane", action="store_true", help="do not start the lane job (it runs elsewhere)")
    s.add_argument("--no-yield", action="store_true",
                   help="read at the budget even while live prompts arrive (by default the pace drops to "
                        "RSCF_BACKFILL_LIVE_FLOOR_ROWS_PER_S, 5, while the live prompts topics take more than "
                        "RSCF_BACKFILL_LIVE_BUSY_PER_S, 10/s) and while the cores are busy (RSCF_BACKFILL_YIELD_BUSY)")
    s.add_argument("--wait", action="store_true", help="show a progress bar until it finishes")
    s.add_argument("--timeout", type=float, default=0.0, help="with --wait: give up after this many seconds")
    s.set_defaults(func=cmd_start)

    st = bsub.add_parser("status", parents=[json_parent()], help="a backfill's progress (all, without an id)")
    st.add_argument("backfill_id", nargs="?")
    st.add_argument("--watch", action="store_true", help="progress bar with rates and ETA until it finishes")
    st.add_argument("--timeout", type=float, default=0.0)
    st.set_defaults(func=cmd_status)

    sp = bsub.add_parser("stop", parents=[json_parent()], help="stop with a savepoint (and the results writer)")
    sp.add_argument("backfill_id")
    sp.set_defaults(func=cmd_stop)

    r = bsub.add_parser("resume", parents=[json_parent()], help="resume from the savepoint of `stop`")
    r.add_argument("backfill_id")
    r.add_argument("--wait", action="store_true")
    r.add_argument("--timeout", type=float, default=0.0)
    r.add_argument("--budget", type=float, default=None, metavar="ROWS_PER_S",
                   help="read slower from here on (not above the start's budget), e.g. 10 beside live traffic")
    r.set_defaults(func=cmd_resume)


def cmd_bench(args: argparse.Namespace) -> int:
    from tools import backfill_bench

    def show(s: dict) -> None:
        if not args.json:
            print(_bar(s), end="", flush=True, file=sys.stderr)

    try:
        formats = tuple(f for f in args.formats.split(",") if f)  # "": the side-by-side run only
        result = backfill_bench.run(args.rows, formats, args.budget, args.live_rate,
                                    args.live_duration, args.live_budget, on_update=show,
                                    names=tuple(a for a in args.arms.split(",") if a) or backfill_bench.DEFAULT_ARMS,
                                    rounds=args.rounds, standing_lanes=args.standing_lanes)
    except Exception as exc:  # noqa: BLE001
        return _fail(exc)
    print(json.dumps(result) if args.json else "\n" + json.dumps(result, indent=2))
    ok = all(f["state"] == "FINISHED" for f in result["formats"].values())
    return EXIT_OK if ok else EXIT_FAILED


def register_bench(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("backfill", parents=[json_parent()],
                        help="backfill rows/s end to end with the echo pool, and live p99 with and without one")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--formats", default="jsonl,parquet")
    p.add_argument("--budget", type=float, default=5_000.0, help="rows/s budget of the throughput runs")
    p.add_argument("--live-rate", type=int, default=200, help="live prompts/s of the side-by-side run; 0: skip it")
    p.add_argument("--live-duration", type=float, default=20.0)
    p.add_argument("--live-budget", type=float, default=500.0, help="rows/s budget of the backfill beside live")
    p.add_argument("--arms", default="",
                   help="the backfills to run beside live, in order, comma-separated (tools/backfill_bench.arms; "
                        "default: its DEFAULT_ARMS)")
    p.add_argument("--rounds", type=int, default=1,
                   help="beside/alone rounds of the side-by-side run, interleaved; more rounds, steadier ratios")
    p.add_argument("--standing-lanes", action="store_true",
                   help="start each arm's lane once and leave it running through every run, alone ones included "
                        "(as the stack's rscf-backfill-lane stands); default: a lane per beside run")
    p.set_defaults(func=cmd_bench)
