"""Background worker replicas on one host, tracked by PID files (no daemon, no Docker).

``rscf workers start|stop|status|scale`` and the lag autoscaler all go through here,
so there is one way a replica is started (its own session, log file, PID file) and
one way it is stopped (SIGTERM, so it finishes its batch and commits; SIGKILL only
after a grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from inference_workers.metrics import LANE_REPLICA_BASE, announced_port, unregister_scrape_target
from rscf.settings import SETTINGS


@dataclass
class Replica:
    pool: str
    replica: int
    pid: int | None
    alive: bool
    pid_file: Path
    log_file: Path
    port: int

    def as_dict(self) -> dict:
        return {
            "pool": self.pool,
            "replica": self.replica,
            "pid": self.pid,
            "alive": self.alive,
            "metrics_port": self.port,
            "log": str(self.log_file),
            "parked": standby_marker(self.pool, self.replica).exists(),  # a warm standby (standby.py)
        }


def pid_file(pool: str, replica: int) -> Path:
    return SETTINGS.paths.pids / f"worker-{pool}-{replica}.pid"


def standby_marker(pool: str, replica: int) -> Path:
    """Present while the replica is a parked warm standby (inference_workers/standby.py)."""
    return SETTINGS.paths.pids / f"worker-{pool}-{replica}.standby"


def log_file(pool: str, replica: int) -> Path:
    return SETTINGS.paths.logs / f"worker-{pool}-{replica}.log"


def is_worker(pid: int, pool: str) -> bool:
    """True when ``pid`` runs and is a worker of this pool (guards against PID reuse)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the signal probe
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False  # zombie: exited, not yet reaped
    except (OSError, IndexError):
        pass
    args = [a.decode(errors="replace") for a in cmdline]
    return "worker" in args and pool in args


def replica(pool: str, index: int) -> Replica:
    pf = pid_file(pool, index)
    pid = None
    if pf.exists():
        try:
            pid = int(pf.read_text().strip())
        except ValueError:
            pid = None
    alive = pid is not None and is_worker(pid, pool)
    return Replica(pool, index, pid, alive, pf, log_file(pool, index), announced_port(pool, index))


def replicas(pool: str | None = None) -> list[Replica]:
    """Every replica with a PID file, dead ones included (status shows them)."""
    out = []
    if not SETTINGS.paths.pids.exists():
        return out
    for pf in sorted(SETTINGS.paths.pids.glob("worker-*.pid")):
        stem = pf.stem[len("worker-"):]
        name, _, idx = stem.rpartition("-")
        if not idx.isdigit() or (pool is not None and name != pool):
            continue
        out.append(replica(name, int(idx)))
    return sorted(out, key=lambda r: (r.pool, r.replica))


def alive_replicas(pool: str) -> list[Replica]:
    return [r for r in replicas(pool) if r.alive]


def serving_replicas(pool: str) -> list[Replica]:
    """Alive replicas of the pool's live lanes: not a backfill lane's (they read other topics), not a
    parked standby (not in the group). What `rscf workers start` counts as the pool already running."""
    return [r for r in alive_replicas(pool)
            if r.replica < LANE_REPLICA_BASE and not standby_marker(pool, r.replica).exists()]


def free_index(pool: str) -> int:
    """Lowest live replica index with no replica alive (a dead one's PID file is reused)."""
    taken = {r.replica for r in alive_replicas(pool)}
    return next(i for i in range(LANE_REPLICA_BASE) if i not in taken)


def start_replica(pool: str, index: int, extra_args: list[str] | None = None) -> Replica:
    """Start ``rscf worker run`` in its own session; stdout/stderr to the replica's log."""
    existing = replica(pool, index)
    if existing.alive:
        return existing
    SETTINGS.paths.pids.mkdir(parents=True, exist_ok=True)
    SETTINGS.paths.logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cli.main", "worker", "run", "--pool", pool, "--replica", str(index)]
    cmd += extra_args or []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SETTINGS.paths.repo), os.environ.get("PYTHONPATH")]))}
    with open(log_file(pool, index), "ab") as logf:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            cwd=SETTINGS.paths.repo, env=env, start_new_session=True,
        )
    pid_file(pool, index).write_text(f"{proc.pid}\n")
    return replica(pool, index)


def stop_replica(r: Replica, grace_s: float = 60.0) -> bool:
    """SIGTERM (finish batch, commit, leave group), SIGKILL after ``grace_s``; True if it is gone."""
    if r.alive and r.pid is not None:
        os.kill(r.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and is_worker(r.pid, r.pool):
            _reap(r.pid)
            time.sleep(0.2)
        if is_worker(r.pid, r.pool):
            os.kill(r.pid, signal.SIGKILL)
            time.sleep(0.2)
            _reap(r.pid)
    gone = r.pid is None or not is_worker(r.pid, r.pool)
    if gone:
        r.pid_file.unlink(missing_ok=True)
        unregister_scrape_target(f"worker-{r.pool}-{r.replica}")  # a SIGKILLed replica leaves it behind
    return gone


def _reap(pid: int) -> None:
    """Collect the exit status when the replica is our own child (started in this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def scale(pool: str, n: int, grace_s: float = 60.0, extra_args: list[str] | None = None) -> tuple[list[Replica], list[Replica]]:
    """Bring ``pool`` to ``n`` live replicas: start the lowest free indices, stop the highest first."""
    if n < 0:
        raise ValueError("replicas must be >= 0")
    for dead in [r for r in replicas(pool) if not r.alive]:
        dead.pid_file.unlink(missing_ok=True)
        unregister_scrape_target(f"worker-{pool}-{dead.replica}")  # its announced port is no longer its
    alive = alive_replicas(pool)
    started, stopped = [], []
    if len(alive) < n:
        used = {r.replica for r in alive}
        index = 0
        while len(alive) + len(started) < n:
            if index not in used:
                started.append(start_replica(pool, index, extra_args))
            index += 1
    elif len(alive) > n:
        for r in sorted(alive, key=lambda r: r.replica, reverse=True)[: len(alive) - n]:
            stop_replica(r, grace_s)
            stopped.append(r)
    return started, stopped
