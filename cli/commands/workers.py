"""`rscf worker run`, `rscf workers start|stop|status|scale|autoscale`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.pools import POOLS
from rscf.settings import SETTINGS


def build_handler(pool: str, model: str | None = None, version: str | None = None, echo_latency_ms: float = 0.0):
    """The pool's handler: EchoHandler for `echo`, otherwise the model registry's `load_handler`."""
    if pool == "echo":
        from inference_workers.handlers.echo import EchoHandler

        return EchoHandler(model_name=model, model_version=version, item_latency_ms=echo_latency_ms)
    return _registry_load_handler()(pool, model=model, version=version)


def _registry_load_handler():
    """`load_handler(pool, version=, model=)` of the model registry (built-in models, S3, local dirs)."""
    from inference_workers.models import load_handler

    return load_handler


def _out(args: argparse.Namespace, data, text: str) -> None:
    print(json.dumps(data, default=str) if args.json else text)


# ----------------------------------------------------------------------- worker run
def worker_settings(args: argparse.Namespace):
    """WorkerSettings from `rscf worker run`'s options (test workers parse the same options)."""
    from inference_workers.batching import batch_wait_ms
    from inference_workers.worker import WorkerSettings

    return WorkerSettings(
        max_batch=args.max_batch,
        max_wait_ms=batch_wait_ms(args.pool, args.max_wait_ms),
        replica=args.replica,
        requests_topic=args.requests_topic,
        results_topic=args.results_topic,
        group_id=args.group,
        metrics_port=args.metrics_port,
        # Only the real pool's replicas are announced to Prometheus, not test workers on private topics.
        announce=args.requests_topic is None,
        standby=getattr(args, "standby", False),
    )


def cmd_worker_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import torch

        torch.set_num_threads(SETTINGS.limits.torch_threads)
    except ImportError:
        pass
    from inference_workers.worker import serve

    try:
        handler = build_handler(args.pool, args.model, args.version, args.echo_latency_ms)
    except Exception as exc:  # noqa: BLE001
        print(f"cannot build handler for pool {args.pool}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    serve(args.pool, handler, worker_settings(args))
    return EXIT_OK


# ----------------------------------------------------------------------- workers *
def _pools(args: argparse.Namespace) -> list[str]:
    return args.pool or list(POOLS)


START_ATTEMPTS = 3  # a pool whose replica exits before it is ready is started this many times in all


def cmd_start(args: argparse.Namespace) -> int:
    from inference_workers import supervisor

    started = []
    for pool in _pools(args):
        if supervisor.serving_replicas(pool):  # a backfill lane's or a parked standby does not count
            continue
        started.append(supervisor.start_replica(pool, supervisor.free_index(pool)).as_dict())
    failed = _wait_ready(_pools(args), args.wait, {r["pool"] for r in started}) if args.wait else {}
    _out(
        args,
        {"started": started, "not_ready": sorted(failed), "why": failed},
        "\n".join(f"started {r['pool']}#{r['replica']} pid {r['pid']}" for r in started) or "already running",
    )
    for pool, why in sorted(failed.items()):
        print(f"{pool}: {why}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _wait_ready(pools: list[str], timeout_s: float, started: set[str]) -> dict[str, str]:
    """Block until one replica of each pool answers /readyz (model loaded, partitions assigned); pool ->
    why not. A pool left with no serving replica (it exited, or was draining when we looked: the pool
    controller scales an idle pool to zero) gets a new one, START_ATTEMPTS starts in all."""
    from inference_workers import supervisor

    deadline = time.monotonic() + timeout_s
    starts = {p: 1 if p in started else 0 for p in pools}
    logs = {p: supervisor.log_file(p, 0) for p in pools}
    waiting, failed = set(pools), {}
    while waiting and time.monotonic() < deadline:
        for pool in sorted(waiting):
            serving = supervisor.serving_replicas(pool)
            if serving:
                logs[pool] = serving[0].log_file
            if any(_probe(r.port) == "ready" for r in serving):
                waiting.discard(pool)
            elif not serving and starts[pool] >= START_ATTEMPTS:
                waiting.discard(pool)
                failed[pool] = f"no replica stayed up ({starts[pool]} started){_log_tail(logs[pool])}"
            elif not serving:
                starts[pool] += 1
                logs[pool] = supervisor.start_replica(pool, supervisor.free_index(pool)).log_file
        time.sleep(1)
    return failed | {p: f"not ready after {timeout_s:.0f} s{_log_tail(logs[p])}" for p in waiting}


def _log_tail(path, lines: int = 8) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"; no log at {path}"
    return f"; log {path} ends:\n  " + "\n  ".join(tail)


def cmd_stop(args: argparse.Namespace) -> int:
    from inference_workers import supervisor

    stopped, failed = [], []
    for pool in _pools(args):
        for r in supervisor.replicas(pool):
            (stopped if supervisor.stop_replica(r, args.grace) else failed).append(r.as_dict())
    _out(args, {"stopped": stopped, "failed": failed},
         "\n".join([f"stopped {r['pool']}#{r['replica']}" for r in stopped] + [f"FAILED to stop {r['pool']}#{r['replica']}" for r in failed]) or "nothing running")
    return EXIT_OK if not failed else EXIT_FAILED


def _probe(port: int) -> str:
    import httpx

    try:
        r = httpx.get(f"http://{SETTINGS.host}:{port}/readyz", timeout=0.5)
        return "ready" if r.status_code == 200 else "not-ready"
    except httpx.HTTPError:
        return "no-http"


def cmd_status(args: argparse.Namespace) -> int:
    from inference_workers import supervisor

    rows = []
    for r in supervisor.replicas(args.pool[0] if args.pool and len(args.pool) == 1 else None):
        if args.pool and r.pool not in args.pool:
            continue
        row = r.as_dict()
        row["health"] = _probe(r.port) if r.alive else "dead"
        rows.append(row)
    if args.json:
        print(json.dumps({"replicas": rows}))
    else:
        print(f"{'pool':<11} {'#':>2} {'pid':>7} {'state':<6} {'health':<9} {'port':>5}  log")
        for row in rows:
            print(f"{row['pool']:<11} {row['replica']:>2} {row['pid'] or '-':>7} {'alive' if row['alive'] else 'dead':<6} {row['health']:<9} {row['metrics_port']:>5}  {row['log']}")
        if not rows:
            print("no worker replicas")
    return EXIT_OK if all(r["alive"] for r in rows) else EXIT_FAILED


def cmd_scale(args: argparse.Namespace) -> int:
    from inference_workers import supervisor

    if args.replicas < 0:
        print("--replicas must be >= 0", file=sys.stderr)
        return EXIT_BAD_INPUT
    started, stopped = supervisor.scale(args.pool, args.replicas, grace_s=args.grace)
    alive = supervisor.alive_replicas(args.pool)
    data = {"pool": args.pool, "replicas": len(alive), "started": [r.as_dict() for r in started], "stopped": [r.as_dict() for r in stopped]}
    _out(args, data, f"{args.pool}: {len(alive)} replicas (+{len(started)} -{len(stopped)})")
    return EXIT_OK if len(alive) == args.replicas else EXIT_FAILED


def cmd_autoscale(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from inference_workers.autoscaler import autoscale_once

    pools = _pools(args)
    metrics = server = None
    if not args.once:
        from inference_workers.metrics import AutoscalerMetrics, HealthServer, register_scrape_target

        metrics = AutoscalerMetrics()
        server = HealthServer(metrics, lambda: True, SETTINGS.ports.autoscaler_metrics, SETTINGS.host).start()
        register_scrape_target("autoscaler", server.port, {"component": "autoscaler"})
    try:
        while True:
            try:
                report = autoscale_once(pools, args.min, args.max, args.target_lag, args.grace, metrics=metrics)
            except (KafkaException, TimeoutError) as exc:
                print(f"kafka unavailable: {exc}", file=sys.stderr)
                if args.once:
                    return EXIT_UNAVAILABLE
                time.sleep(args.interval)
                continue
            if args.json:
                print(json.dumps({"at": time.time(), "pools": report}), flush=True)
            else:
                for row in report:
                    print(f"{row['pool']:<11} lag {row['lag']:>6}  replicas {row['replicas']} -> {row['desired']}", flush=True)
            if args.once:
                return EXIT_OK
            time.sleep(args.interval)
    finally:
        if server is not None:
            from inference_workers.metrics import unregister_scrape_target

            unregister_scrape_target("autoscaler")
            server.stop()


# ----------------------------------------------------------------------- registration
def _register_worker(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="run one inference worker in the foreground")
    wsub = worker.add_subparsers(dest="worker_command", required=True)
    p = wsub.add_parser("run", parents=[json_parent()], help="consume a pool's requests until SIGTERM")
    p.add_argument("--pool", required=True, choices=POOLS)
    p.add_argument("--replica", type=int, default=0, help="replica index (sets the metrics port)")
    p.add_argument("--max-batch", type=int, default=SETTINGS.limits.worker_max_batch)
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help=f"wait for a fuller batch while the model is idle (default: the pool's, else "
                        f"{SETTINGS.limits.worker_max_wait_ms:g}; echo 0)")
    p.add_argument("--model", default=None, help="model name in the registry (default: the pool's)")
    p.add_argument("--version", default=None, help="model version (default: the pool's current)")
    p.add_argument("--requests-topic", default=None, help="override (tests): default genai.inference.requests.<pool>")
    p.add_argument("--results-topic", default=None, help="override (tests): default genai.inference.results")
    p.add_argument("--group", default=None, help="override (tests): default rscf-workers-<pool>")
    p.add_argument("--metrics-port", type=int, default=None, help="default worker_metrics_first + index; 0 any; -1 none")
    p.add_argument("--echo-latency-ms", type=float, default=0.0,
                   help="echo only: simulated model time per request (tests and `rscf bench burst`)")
    p.add_argument("--standby", action="store_true",
                   help="load the model, then wait parked (not in the group) for SIGUSR1: the pool controller's warm standby")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_worker_run)


def _register_workers(sub: argparse._SubParsersAction) -> None:
    workers = sub.add_parser("workers", help="background worker replicas (PID files) and their scaling")
    wsub = workers.add_subparsers(dest="workers_command", required=True)
    for name, func, helptext in (
        ("start", cmd_start, "start one replica per pool (all pools unless --pool)"),
        ("stop", cmd_stop, "SIGTERM every replica (finish batch, commit), SIGKILL after --grace"),
        ("status", cmd_status, "replicas, PIDs and /readyz"),
    ):
        p = wsub.add_parser(name, parents=[json_parent()], help=helptext)
        p.add_argument("--pool", action="append", choices=POOLS)
        p.add_argument("--grace", type=float, default=60.0, help="seconds between SIGTERM and SIGKILL")
        if name == "start":
            p.add_argument("--wait", type=float, default=0.0, help="seconds to wait until each pool is ready")
        p.set_defaults(func=func)
    p = wsub.add_parser("scale", parents=[json_parent()], help="run exactly N replicas of a pool")
    p.add_argument("--pool", required=True, choices=POOLS)
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--grace", type=float, default=60.0)
    p.set_defaults(func=cmd_scale)

    from inference_workers import autoscaler as a

    p = wsub.add_parser("autoscale", parents=[json_parent()],
                        help="scale replicas on lag in the foreground (the pool-controller service of `rscf up` does it for you)")
    p.add_argument("--pool", action="append", choices=POOLS)
    p.add_argument("--once", action="store_true", help="one measurement and decision, then exit")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--min", type=int, default=a.MIN_REPLICAS)
    p.add_argument("--max", type=int, default=a.MAX_REPLICAS)
    p.add_argument("--target-lag", type=int, default=a.TARGET_LAG_PER_REPLICA, help="unanswered requests per replica")
    p.add_argument("--grace", type=float, default=60.0)
    p.set_defaults(func=cmd_autoscale)


def register(sub: argparse._SubParsersAction) -> None:
    _register_worker(sub)
    _register_workers(sub)
