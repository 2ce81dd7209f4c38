"""Warm standby replicas: started ahead, model loaded, parked outside the consumer group until needed.

A cold start is process start + imports + model load before a new replica consumes: measured here,
the image pool 6 s on an idle machine and 13-20 s while a burst loads the cores (`rscf bench burst
--pool image`). A parked replica (`rscf worker run --standby`) has done all of that and waits for
SIGUSR1 before it joins the group, so a scale-up that finds one costs a signal and a group join.
It is started niced (`STANDBY_NICE`), so loading it never slows the replicas serving; activation
renices every thread of it back to the pool's niceness (raising a priority needs root or
CAP_SYS_NICE; without it the replica serves niced and the log says so). The same idea as an
auto-scaling group's warm pool; what it costs is the parked process's memory, nothing else.

A parked replica has a PID file like any other plus a marker `worker-<pool>-<index>.standby`
(written before the start, removed on activation), so a restarted controller adopts it as parked.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from inference_workers import supervisor
from rscf.settings import SETTINGS

log = logging.getLogger("rscf.pool_controller")

STANDBY_NICE = 10  # CFS weight 110 vs 1024: a parked replica's loading takes ~10 % of a contended core
ACTIVATE_SIGNAL = signal.SIGUSR1
STANDBY_ARG = "--standby"


marker = supervisor.standby_marker


def parked(pool: str) -> dict[int, supervisor.Replica]:
    """Live parked replicas of a pool by index; a marker whose replica is gone is removed."""
    out: dict[int, supervisor.Replica] = {}
    if not SETTINGS.paths.pids.exists():
        return out
    prefix = f"worker-{pool}-"
    for m in SETTINGS.paths.pids.glob(f"{prefix}*.standby"):
        idx = m.stem[len(prefix):]
        if not idx.isdigit():
            continue
        r = supervisor.replica(pool, int(idx))
        if r.alive:
            out[r.replica] = r
        elif not r.pid_file.exists():
            m.unlink(missing_ok=True)  # never started or already cleaned up (a crash while parked is the caller's)
    return out


def wait_for_activation(activate: threading.Event, stopped: threading.Event, worker_id: str,
                        worker_log: logging.Logger) -> bool:
    """The parked replica's side: model loaded, wait until ACTIVATE_SIGNAL sets `activate` (True) or the
    replica is stopped (False; stopping sets `activate` too)."""
    worker_log.info("worker %s parked (model loaded, not in the group): waiting for SIGUSR1", worker_id)
    started = time.monotonic()
    while not activate.wait(0.5):
        pass
    if stopped.is_set():
        return False
    worker_log.info("worker %s activated after %.1f s parked", worker_id, time.monotonic() - started)
    return True


def park(pool: str, index: int, args: list[str]) -> supervisor.Replica:
    """Start a replica that loads its model and waits, niced, for ACTIVATE_SIGNAL."""
    SETTINGS.paths.pids.mkdir(parents=True, exist_ok=True)
    marker(pool, index).write_text("parked\n")
    r = supervisor.start_replica(pool, index, [*args, STANDBY_ARG])
    if r.pid is not None:
        set_nice(r.pid, STANDBY_NICE)
    return r


def activate(r: supervisor.Replica, nice: int = 0) -> bool:
    """Renice back to `nice` and signal the parked replica to join its group; False if it is gone."""
    if r.pid is None:
        return False
    set_nice(r.pid, nice)
    try:
        os.kill(r.pid, ACTIVATE_SIGNAL)
    except ProcessLookupError:
        return False
    marker(r.pool, r.replica).unlink(missing_ok=True)
    return True


def set_nice(pid: int, nice: int) -> None:
    """Set the niceness of every thread of `pid` (Linux niceness is per thread; threads made later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]  # no /proc: the process only
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue
        except PermissionError as exc:  # lowering niceness needs CAP_SYS_NICE
            log.warning("cannot set niceness %d on pid %s thread %s: %s", nice, pid, tid, exc)
            return
