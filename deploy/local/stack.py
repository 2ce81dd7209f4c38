"""The local stack: Kafka, Flink, schema registry, S3, Redis and Prometheus, supervised by supervisord.

`up` writes supervisord's config, starts supervisord (or reuses the one already
running for this data dir), then starts each service that is not running, in
the order of `services.SERVICES`, waiting for its health check, and provisions;
from then on supervisord restarts any service that exits (see
`deploy.local.supervision`). `down` stops the services in reverse order, then
supervisord. `status` reports each service with its supervisor state, PID,
memory, restarts and uptime. PID files: `deploy.local.processes`; each service's
config: `deploy.local.services` and `deploy.local.flink`; topics, buckets and
schemas: `deploy.local.provision`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

import psutil

from deploy.local import supervision
from deploy.local.processes import (Service, StackError, log_tail, port_bindable, port_in_use, recorded_process,
                                    stop_recorded)
from deploy.local.provision import provision
from deploy.local.installed import require_installed
from deploy.local.services import POOL_CONTROLLER, SERVICE_BY_NAME, SERVICES
from rscf.settings import SETTINGS

UNSUPERVISED = "UNSUPERVISED"  # running from a PID file, but not under this stack's supervisord


@dataclass
class ServiceState:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    rss_mb: float | None
    url: str
    log: str
    state: str = "STOPPED"  # supervisord's state of the program, or UNSUPERVISED
    restarts: int = 0  # exits supervisord did not ask for, since it started
    uptime_s: float | None = None


def _rss_mb(proc: psutil.Process) -> float | None:
    try:
        return sum(p.memory_info().rss for p in [proc] + proc.children(recursive=True)) / 2**20
    except psutil.NoSuchProcess:
        return None


def _state(svc: Service, prog: supervision.ProgramState | None, restarts: int) -> ServiceState:
    proc = None
    if prog is not None and prog.pid:
        try:
            proc = psutil.Process(prog.pid)
        except psutil.NoSuchProcess:
            proc = None
    state = prog.state if prog is not None else "STOPPED"
    uptime = prog.uptime_s if prog is not None else None
    if proc is None:
        proc = recorded_process(svc.pid_file)  # started before supervision, or supervisord is gone
        if proc is not None:
            state, uptime = UNSUPERVISED, time.time() - proc.create_time()
    rss = _rss_mb(proc) if proc is not None else None
    healthy = proc is not None and svc.health()
    return ServiceState(svc.name, proc is not None, healthy, proc.pid if proc else None, rss, svc.url,
                        str(svc.log), state, restarts, round(uptime, 1) if uptime is not None else None)


def service_state(svc: Service) -> ServiceState:
    lay = supervision.layout()
    prog = supervision.program_states(lay).get(svc.name)
    return _state(svc, prog, supervision.restart_counts(lay.log).get(svc.name, 0))


def status() -> list[ServiceState]:
    lay = supervision.layout()
    progs = supervision.program_states(lay)
    restarts = supervision.restart_counts(lay.log)
    return [_state(s, progs.get(s.name), restarts.get(s.name, 0)) for s in SERVICES]


def _ensure_supervisord(services: tuple[Service, ...], progress: Callable[[str], None]) -> bool:
    """Write the config; start supervisord or have the running one reload it. True if started here."""
    lay = supervision.layout()
    programs = [supervision.program_for(s, priority=10 * (i + 1)) for i, s in enumerate(services)]
    try:
        supervision.write_config(lay, programs)
        if supervision.supervisord_process(lay) is not None and supervision.answers(lay):
            for name in supervision.apply_config(lay):
                progress(f"{name}: its command changed; it keeps running as it is until `rscf down` + `rscf up`")
            return False
        proc = supervision.start_supervisord(lay)
    except (supervision.SupervisorError, ValueError) as exc:
        raise StackError(f"supervisor: {exc}") from exc
    progress(f"supervisord: started (pid {proc.pid}, socket {lay.socket})")
    return True


def _wait_healthy(svc: Service, deadline: float, supervised: bool = True) -> None:
    """Wait for the health check; fail with the log tail once supervisord gives the program up (FATAL)."""
    lay = supervision.layout()
    while True:  # checked at least once: the deadline may have passed while `up` waited for the JobManager
        prog = supervision.program_states(lay).get(svc.name) if supervised else None
        if prog is not None and prog.state == "FATAL":
            raise StackError(
                f"{svc.name}: crash loop: exited within {svc.startsecs} s of its start "
                f"{1 + supervision.START_RETRIES} times in a row, supervisord gave up (FATAL)"
                f"{': ' + prog.spawnerr if prog.spawnerr else ''}; log: {svc.log}\n{log_tail(svc.log)}"
            )
        if prog is not None and prog.state == "STOPPED":  # EXITED is brief: supervisord restarts it
            raise StackError(f"{svc.name}: stopped during start; log: {svc.log}\n{log_tail(svc.log)}")
        if (prog is None or prog.alive) and svc.health():
            return
        if time.monotonic() >= deadline:
            raise StackError(f"{svc.name}: not healthy after {svc.start_timeout_s:.0f} s; log: {svc.log}\n"
                             f"{log_tail(svc.log)}")
        time.sleep(0.5)


def up(progress: Callable[[str], None] = lambda msg: None, only: list[str] | None = None) -> dict:
    """Start whatever is not running under supervisord, wait for health, then create topics and buckets
    and register schemas.

    If any service fails, every program this call started is stopped again (and
    supervisord too, if this call started it and nothing else runs).
    """
    require_installed()
    for sub in (SETTINGS.paths.logs, SETTINGS.paths.pids):
        sub.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    lay = supervision.layout()
    started_supervisord = _ensure_supervisord(SERVICES, progress)
    started: list[Service] = []
    pending: list[tuple[Service, float, bool]] = []  # service, deadline, under supervisord
    if only is not None and "registry" in only:
        only = [*only, "registry-proxy"]  # the registry's clients reach it through its proxy (registry_proxy.py)
    wanted = [s for s in SERVICES if only is None or s.name in only]
    try:
        for svc in wanted:
            prog = supervision.program_states(lay).get(svc.name)
            if prog is not None and prog.alive:
                progress(f"{svc.name}: already running (pid {prog.pid}, {prog.state.lower()})")
                pending.append((svc, time.monotonic() + svc.start_timeout_s, True))
                continue
            legacy = recorded_process(svc.pid_file)
            if legacy is not None:
                progress(f"{svc.name}: already running unsupervised (pid {legacy.pid}, started before supervision "
                         "or by a supervisord that is gone): `rscf down` + `rscf up` puts it under supervision")
                pending.append((svc, time.monotonic() + svc.start_timeout_s, False))
                continue
            if svc.name == "flink-taskmanager":
                # The TaskManager needs the JobManager's RPC endpoint up before it registers.
                for s, dl, supervised in pending:
                    if s.name == "flink-jobmanager":
                        _wait_healthy(s, dl, supervised)
            for port in svc.ports:
                if port_in_use(port):
                    raise StackError(
                        f"{svc.name}: port {port} on {SETTINGS.host} is already taken by another process "
                        f"(not started by rscf). Free it or set the RSCF_*_PORT variable in rscf/settings.py."
                    )
                if not port_bindable(port):
                    raise StackError(
                        f"{svc.name}: port {port} on {SETTINGS.host} cannot be bound: nothing listens there, but a "
                        f"connection holds it as its local end (Linux's ephemeral range is 32768-60999). Choose a "
                        f"port below 32768 with the RSCF_*_PORT variable in rscf/settings.py."
                    )
            svc.prepare()
            try:
                supervision.start_program(lay, svc.name)
            except supervision.SupervisorError as exc:
                raise StackError(f"{exc}; log: {svc.log}") from exc
            started.append(svc)
            progress(f"{svc.name}: started")
            pending.append((svc, time.monotonic() + svc.start_timeout_s, True))
        for svc, deadline, supervised in pending:
            _wait_healthy(svc, deadline, supervised)
            progress(f"{svc.name}: healthy")
        provision(progress)
    except BaseException:
        for svc in reversed(started):
            supervision.stop_program(lay, svc.name)
        if started_supervisord and not any(p.alive for p in supervision.program_states(lay).values()):
            supervision.shutdown(lay)
        raise
    return {"seconds": round(time.monotonic() - t0, 1), "started": [s.name for s in started]}


def stop_service(name: str) -> bool:
    """Stop one service so that it stays stopped (supervisord does not restart it). True if it ran."""
    svc = SERVICE_BY_NAME[name]
    lay = supervision.layout()
    stopped = supervision.stop_program(lay, name)
    return stop_recorded(svc.pid_file) or stopped


def down(progress: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Stop worker replicas (they commit while Kafka is still up), every service in reverse start order,
    then supervisord.

    Only this data dir's supervisord and processes whose PID files name a live
    process rscf started are touched.
    """
    stopped = []
    from inference_workers import supervisor

    lay = supervision.layout()
    # The pool controller first: it drains its replicas, and would restart any stopped behind its back.
    if supervision.stop_program(lay, "pool-controller") | stop_recorded(POOL_CONTROLLER.pid_file):
        stopped.append("pool-controller")
        progress("pool-controller: stopped (replicas drained)")
    for replica in supervisor.replicas():
        if replica.alive and supervisor.stop_replica(replica, grace_s=30):
            stopped.append(f"worker-{replica.pool}-{replica.replica}")
            progress(f"worker {replica.pool}#{replica.replica}: stopped")
    for svc in reversed(SERVICES):
        # through supervisord; a process started before supervision (or orphaned) by its PID file
        if supervision.stop_program(lay, svc.name) | stop_recorded(svc.pid_file):
            stopped.append(svc.name)
            progress(f"{svc.name}: stopped")
    if supervision.shutdown(lay):
        stopped.append("supervisord")
        progress("supervisord: stopped")
    return stopped


def stack_pids() -> list[int]:
    """PIDs of the running services, in start order (not supervisord's: `supervisord_pid`)."""
    progs = supervision.program_states(supervision.layout())
    pids = []
    for svc in SERVICES:
        prog = progs.get(svc.name)
        if prog is not None and prog.pid:
            pids.append(prog.pid)
        elif (proc := recorded_process(svc.pid_file)) is not None:
            pids.append(proc.pid)
    return pids


def supervisord_pid() -> int | None:
    proc = supervision.supervisord_process(supervision.layout())
    return proc.pid if proc is not None else None


if __name__ == "__main__":  # pragma: no cover - convenience for debugging
    print(json.dumps(up(lambda m: print(m, file=sys.stderr)), indent=2))
