"""The local stack's services as processes: the Service record, PID files with start times, stop, port checks.

supervisord starts and restarts them (`deploy.local.supervision`); each one
writes a PID file holding its PID and its start time whenever it (re)starts
(`deploy/local/exec_recorded.py`), so that whoever reads it (the benchmarks' CPU
meter, tests, `rscf down` for processes started before supervision) names
exactly that process and never a reused PID.
"""

from __future__ import annotations

import json
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from deploy.local import supervision
from deploy.local.exec_recorded import start_ticks
from rscf.settings import SETTINGS


class StackError(RuntimeError):
    """A service could not be installed, started or reached; the message names it and its log."""


@dataclass
class Service:
    """A process of the stack: how to prepare and start it, which ports it takes, how to tell it is healthy."""

    name: str
    ports: tuple[int, ...]
    argv: Callable[[], list[str]]
    health: Callable[[], bool]
    url: str
    prepare: Callable[[], None] = lambda: None
    env: Callable[[], dict[str, str]] = dict
    start_timeout_s: float = 90.0
    # supervisord: a start counts as failed (back-off, then FATAL) if the process exits within startsecs;
    # slow JVMs get more, so that a crash during their start is a failed start and not a restart loop.
    startsecs: int = 3
    stop_signal: str = "TERM"
    stop_wait_s: int = 20  # then SIGKILL to the whole process group
    directory: Path | None = None  # its working directory (default: the data dir)

    @property
    def log(self) -> Path:
        return SETTINGS.paths.logs / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return SETTINGS.paths.pids / f"{self.name}.pid"


def _write_pid(path: Path, proc: psutil.Process) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": proc.pid, "create_time": proc.create_time(), "start_ticks": start_ticks(proc.pid)}))


def recorded_process(path: Path) -> psutil.Process | None:
    """The process a PID file names, only if it is still that same process: same start in ticks since boot (a
    wall-clock step moves start times in seconds since the epoch, not these), else, for an older file, the same
    start time within 1 s."""
    try:
        info = json.loads(path.read_text())
        proc = psutil.Process(int(info["pid"]))
        if "start_ticks" in info:
            if start_ticks(proc.pid) != int(info["start_ticks"]):
                return None
        elif abs(proc.create_time() - float(info["create_time"])) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (FileNotFoundError, ValueError, KeyError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def stop_recorded(path: Path, timeout_s: float = 20.0) -> bool:
    """Stop the process (and the children it spawned) that a PID file names. True if one was stopped.

    A service that supervisord runs is stopped through supervisord, so that it stays
    stopped (a signal alone would count as a crash, and supervisord would restart it).
    """
    proc = recorded_process(path)
    path.unlink(missing_ok=True)
    if proc is None:
        return False
    owner = supervision.supervised_pid_file_owner(path, proc.pid)
    if owner is not None:
        return supervision.stop_program(owner, path.stem)
    try:
        family = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return True


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a process and its children so far (benchmarks take differences); 0 for any gone."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """A server could listen on ``port`` now. False also when nothing listens there but a connection holds it
    as its local end (ports 32768-60999 are Linux's ephemeral range): `port_in_use` does not see that, and
    the server would die at start with "Address already in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a TIME_WAIT socket is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def http_ok(url: str, timeout: float = 2.0, **client: object) -> bool:
    """GET ``url`` answers 200; ``client``: httpx's ``auth=``, ``verify=`` (a service that wants credentials)."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout, **client).status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"
