"""The local stack: Kafka, Flink, schema registry, S3, Redis and Prometheus as plain processes.

`up` starts what is not running (in the order of `services.SERVICES`), waits for
health, then provisions; `down` stops exactly what `up` started; `status` reports
each service. Processes and their PID files: `deploy.local.processes`; each
service's config: `deploy.local.services` and `deploy.local.flink`; topics,
buckets and schemas: `deploy.local.provision`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

import psutil

from deploy.local.processes import Service, recorded_process, start, stop_recorded, wait_healthy
from deploy.local.provision import provision
from deploy.local.services import SERVICE_BY_NAME, SERVICES, require_installed
from rscf.settings import SETTINGS


@dataclass
class ServiceState:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    rss_mb: float | None
    url: str
    log: str


def service_state(svc: Service) -> ServiceState:
    proc = recorded_process(svc.pid_file)
    rss = None
    if proc is not None:
        try:
            rss = sum(p.memory_info().rss for p in [proc] + proc.children(recursive=True)) / 2**20
        except psutil.NoSuchProcess:
            rss = None
    healthy = proc is not None and svc.health()
    return ServiceState(svc.name, proc is not None, healthy, proc.pid if proc else None, rss, svc.url, str(svc.log))


def status() -> list[ServiceState]:
    return [service_state(s) for s in SERVICES]


def up(progress: Callable[[str], None] = lambda msg: None, only: list[str] | None = None) -> dict:
    """Start whatever is not running, wait for health, then create topics and buckets and register schemas.

    If any service fails, every process this call started is stopped again.
    """
    require_installed()
    for sub in (SETTINGS.paths.logs, SETTINGS.paths.pids):
        sub.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    started: list[Service] = []
    pending: list[tuple[Service, psutil.Process, float]] = []
    wanted = [s for s in SERVICES if only is None or s.name in only]
    try:
        for svc in wanted:
            state = service_state(svc)
            if state.running:
                progress(f"{svc.name}: already running (pid {state.pid})")
                pending.append((svc, recorded_process(svc.pid_file), time.monotonic() + svc.start_timeout_s))
                continue
            if svc.name == "flink-taskmanager":
                # The TaskManager needs the JobManager's RPC endpoint up before it registers.
                jm = SERVICE_BY_NAME["flink-jobmanager"]
                for s, p, dl in pending:
                    if s is jm:
                        wait_healthy(s, p, dl)
            proc = start(svc)
            started.append(svc)
            progress(f"{svc.name}: started (pid {proc.pid})")
            pending.append((svc, proc, time.monotonic() + svc.start_timeout_s))
        for svc, proc, deadline in pending:
            wait_healthy(svc, proc, deadline)
            progress(f"{svc.name}: healthy")
        provision(progress)
    except BaseException:
        for svc in reversed(started):
            stop_recorded(svc.pid_file)
        raise
    return {"seconds": round(time.monotonic() - t0, 1), "started": [s.name for s in started]}


def down(progress: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Stop worker replicas (they commit while Kafka is still up), then every service, in reverse start order.

    Only processes whose PID files name a live process that rscf started are touched.
    """
    stopped = []
    from inference_workers import supervisor

    for replica in supervisor.replicas():
        if replica.alive and supervisor.stop_replica(replica, grace_s=30):
            stopped.append(f"worker-{replica.pool}-{replica.replica}")
            progress(f"worker {replica.pool}#{replica.replica}: stopped")
    for svc in reversed(SERVICES):
        if stop_recorded(svc.pid_file):
            stopped.append(svc.name)
            progress(f"{svc.name}: stopped")
    return stopped


def stack_pids() -> list[int]:
    pids = []
    for svc in SERVICES:
        proc = recorded_process(svc.pid_file)
        if proc is not None:
            pids.append(proc.pid)
    return pids


if __name__ == "__main__":  # pragma: no cover - convenience for debugging
    print(json.dumps(up(lambda m: print(m, file=sys.stderr)), indent=2))
