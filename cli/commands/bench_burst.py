"""`rscf bench burst` and `rscf bench coldstart`: elastic pools under a burst, and each pool's cold start
(issue #15); the measuring is in tools/burst_bench.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.settings import SETTINGS


def cmd_burst(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from tools.burst_bench import Plan, run_burst
    from tools.burst_pools import pool_defaults

    given = pool_defaults(args.pool, steady_rate=args.rate, burst_factor=args.factor, high_rate=args.high_rate,
                          before_s=args.before, burst_s=args.burst, after_s=args.after, item_ms=args.item_ms,
                          max_replicas=args.max_replicas, lag_threshold=args.lag_threshold,
                          max_batch=args.max_batch, image_steps=args.image_steps)
    plan = Plan(**given, pool=args.pool, periods=args.periods, predictive=args.predictive,
                min_replicas=args.min_replicas, kill_at_s=args.kill_at, session_timeout_ms=args.session_timeout_ms,
                only=args.only, standby=args.standby)
    if args.pool != "echo":
        from inference_workers.models.registry import unpublished
        from rscf.pools import pool as pool_row

        if missing := unpublished([pool_row(args.pool).model]):
            print(f"error: no published version of {', '.join(missing)}: run `rscf models build-defaults` first "
                  "(its replicas would only crash-loop)", file=sys.stderr)
            return EXIT_UNAVAILABLE
    say = (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    html = args.html
    if html is None:
        html = str(SETTINGS.paths.data / "bench" / ("burst.html" if args.pool == "echo" else f"burst-{args.pool}.html"))
    try:
        out = run_burst(plan, say, html=Path(html) if html else None)
    except (KafkaException, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(out))
    else:
        for r in out["runs"]:
            print(f"{r['run']} ({r['pool']}): sent {r['sent']} answered {r['answered']} lost {r['lost']} "
                  f"duplicated {r['duplicated']} errors {sum(r['errors'].values())} {r['errors'] or ''} "
                  f"artifacts {r['artifacts']}; "
                  f"replicas max {r['max_replicas_seen']}, lag max {r['max_lag_seen']}; first extra replica "
                  f"consuming {r['first_extra_replica_ready_s']} s after the burst; drain {r['drain_s']} s; "
                  f"HIGH p99 burst/steady {r['high_p99_burst_over_steady']}; replicas at each burst's start "
                  f"{r['replicas_at_burst_starts']}" + (f"; kill {r['kill']}" if r.get("kill") else ""))
            for phase in ("steady", "burst", "after"):
                for prio, v in r["latency_ms"].get(phase, {}).items():
                    print(f"   {phase:<7} {prio:<6} n={v['n']:<5} p50 {v['p50_ms']:>8} p95 {v['p95_ms']:>8} p99 {v['p99_ms']:>8} ms")
        if out.get("plot"):
            print(f"plot: {out['plot']}")
    return EXIT_OK if all(r["lost"] == 0 for r in out["runs"]) else EXIT_FAILED


def cmd_coldstart(args: argparse.Namespace) -> int:
    from tools.burst_bench import cold_start

    rows = [cold_start(p) for p in (args.pool or ["echo"])]
    if args.json:
        print(json.dumps({"pools": rows}))
    else:
        for r in rows:
            print(f"{r['pool']:<11} cold start {r['cold_start_s']} s (start to consuming){'  CRASHED: ' + r['log'] if r['replica_crashed'] else ''}")
    return EXIT_OK if all(r["cold_start_s"] is not None for r in rows) else EXIT_FAILED


def register_bench(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("burst", parents=[json_parent()],
                        help="steady -> 10x LOW/NORMAL burst -> steady with a HIGH trickle: pool controller vs fixed size")
    p.add_argument("--pool", choices=("echo", "image"), default="echo",
                   help="echo: simulated model time; image: real shapes-DDPM workers, load scaled to them "
                        "(defaults per pool in tools/burst_pools.py; echo's in brackets)")
    p.add_argument("--rate", type=float, default=None, help="steady NORMAL+LOW requests/s [20; image 1]")
    p.add_argument("--factor", type=float, default=None, help="burst = rate x factor [10]")
    p.add_argument("--high-rate", type=float, default=None, help="HIGH requests/s throughout [2; image 0.5]")
    p.add_argument("--before", type=float, default=None, help="seconds of steady load before the burst [15; image 20]")
    p.add_argument("--burst", type=float, default=None, help="seconds of burst [10]")
    p.add_argument("--after", type=float, default=None, help="seconds of steady load after the burst [25; image 30]")
    p.add_argument("--item-ms", type=float, default=None,
                   help="echo: simulated model time per request [20]; image: ms per image (forecast only) [345]")
    p.add_argument("--max-replicas", type=int, default=None, help="[4; image 2]")
    p.add_argument("--lag-threshold", type=int, default=None, help="[50; image 5]")
    p.add_argument("--max-batch", type=int, default=None, help="workers' batch size [1]")
    p.add_argument("--image-steps", type=int, default=None, help="image: DDPM steps per image [50]")
    p.add_argument("--periods", type=int, default=1, help="repeat the steady/burst/steady pattern N times")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--kill-at", type=float, default=None, help="SIGKILL the highest replica at this second")
    p.add_argument("--session-timeout-ms", type=int, default=None, help="workers' consumer session timeout")
    p.add_argument("--only", choices=("controller", "fixed-1", "predictive", "reactive"), default=None)
    p.add_argument("--standby", type=int, default=0, help="warm replicas the controller keeps parked [0]")
    p.add_argument("--predictive", action="store_true",
                   help="predictive vs reactive controller (forecast season = one period; use --periods >= 3)")
    p.add_argument("--html", default=None, help="plot page ('' for none; default <data>/bench/burst[-POOL].html)")
    p.set_defaults(func=cmd_burst)

    from rscf.pools import POOLS

    p = bsub.add_parser("coldstart", parents=[json_parent()],
                        help="seconds from a replica's start to consuming, per pool (the pool controller measures it)")
    p.add_argument("--pool", action="append", choices=POOLS)
    p.set_defaults(func=cmd_coldstart)
