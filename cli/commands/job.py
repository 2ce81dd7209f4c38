"""`rscf job start|stop|savepoint|status`: the content pipeline on the local Flink cluster."""

from __future__ import annotations

import argparse
import json
import sys

from cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.settings import SETTINGS


def _emit(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data) if args.json else text)


def _fail(exc: Exception) -> int:
    from deploy.local.flink_jobs import ClusterError

    print(f"error: {exc}", file=sys.stderr)
    return EXIT_UNAVAILABLE if isinstance(exc, ClusterError) and exc.unavailable else EXIT_FAILED


def cmd_start(args: argparse.Namespace) -> int:
    from deploy.local import flink_jobs
    from jobs.config import JobConfig

    cfg = JobConfig(job_name=args.name, topic_suffix=args.topic_suffix, parallelism=args.parallelism,
                    delivery=args.delivery)
    try:
        job = flink_jobs.submit(cfg, args.from_savepoint, wait_s=args.wait,
                             allow_non_restored=args.allow_non_restored_state)
    except flink_jobs.ClusterError as exc:
        return _fail(exc)
    data = {**job.to_dict(), "delivery": cfg.delivery, "checkpoint_interval_ms": cfg.checkpoint_interval_ms,
            "from_savepoint": args.from_savepoint,
            "web_ui": f"{SETTINGS.flink_url}/#/job/running/{job.job_id}/overview"}
    _emit(args, data, f"{job.name} {job.state} as {job.job_id}, {cfg.delivery} ({data['web_ui']})")
    return EXIT_OK


def _target(args: argparse.Namespace):
    from deploy.local import flink_jobs

    job = flink_jobs.running(args.name)
    if job is None:
        raise flink_jobs.ClusterError(f"no running job named {args.name}")
    return job


def cmd_stop(args: argparse.Namespace) -> int:
    from deploy.local import flink_jobs

    try:
        job = _target(args)
        location = flink_jobs.stop(job.job_id, args.savepoint, wait_s=args.wait)
    except flink_jobs.ClusterError as exc:
        return _fail(exc)
    data = {"job_id": job.job_id, "name": job.name, "stopped": True, "savepoint": location}
    _emit(args, data, location or f"{job.name} ({job.job_id}) cancelled without a savepoint")
    return EXIT_OK


def cmd_savepoint(args: argparse.Namespace) -> int:
    from deploy.local import flink_jobs

    try:
        job = _target(args)
        location = flink_jobs.savepoint(job.job_id, wait_s=args.wait)
    except flink_jobs.ClusterError as exc:
        return _fail(exc)
    _emit(args, {"job_id": job.job_id, "name": job.name, "savepoint": location}, location)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from deploy.local import flink_jobs

    try:
        found = flink_jobs.jobs(None if args.all else args.name)
    except flink_jobs.ClusterError as exc:
        return _fail(exc)
    stale = {j.job_id for j in flink_jobs.stale_jobs(found)}
    data = {"jobs": [{**j.to_dict(), "stale_code": j.job_id in stale} for j in found],
            "running": any(j.state == "RUNNING" for j in found)}
    lines = [f"{j.state:<10} {j.job_id} {j.name} ({j.duration_ms // 1000} s)" for j in found]
    _emit(args, data, "\n".join(lines) or f"no job named {args.name}")
    for job in found:
        if job.job_id in stale:
            print(f"warning: {job.name} ({job.job_id}) {flink_jobs.STALE_ADVICE}", file=sys.stderr)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    from jobs.config import JOB_NAME, add_delivery_arguments

    job = sub.add_parser("job", help="the content pipeline job on the Flink cluster")
    jsub = job.add_subparsers(dest="job_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default=JOB_NAME, help="job name (default %(default)s)")
        p.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the cluster")

    p = jsub.add_parser("start", parents=[json_parent()], help="submit the job and wait until all tasks run")
    common(p)
    p.add_argument("--parallelism", "-p", type=int, default=1)
    p.add_argument("--from-savepoint", default=None, metavar="PATH")
    p.add_argument("--allow-non-restored-state", action="store_true",
                   help="with --from-savepoint: skip savepoint state no operator of this version claims "
                        "(an upgrade that removed operators or changed the sources' wiring)")
    add_delivery_arguments(p)
    p.add_argument("--topic-suffix", default="", help="isolated topic set <topic>.<suffix> (tests)")
    p.set_defaults(func=cmd_start)

    p = jsub.add_parser("stop", parents=[json_parent()], help="stop the job (with --savepoint: stop-with-savepoint)")
    common(p)
    p.add_argument("--savepoint", action="store_true")
    p.set_defaults(func=cmd_stop)

    p = jsub.add_parser("savepoint", parents=[json_parent()], help="take a savepoint and keep running")
    common(p)
    p.set_defaults(func=cmd_savepoint)

    p = jsub.add_parser("status", parents=[json_parent()], help="jobs from the cluster's /jobs/overview")
    common(p)
    p.add_argument("--all", action="store_true", help="every job, not only --name")
    p.set_defaults(func=cmd_status)
