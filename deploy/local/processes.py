"""Processes the local stack starts: PID files with start times, start, health wait, stop, port checks.

Each process is started under the data directory and remembered by a PID file
holding the PID and the process start time, so that `down` stops exactly what
`up` started and never a reused PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

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

    @property
    def log(self) -> Path:
        return SETTINGS.paths.logs / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return SETTINGS.paths.pids / f"{self.name}.pid"


def _write_pid(path: Path, proc: psutil.Process) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": proc.pid, "create_time": proc.create_time()}))


def recorded_process(path: Path) -> psutil.Process | None:
    """The process a PID file names, only if it is still that same process."""
    try:
        info = json.loads(path.read_text())
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - float(info["create_time"])) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (FileNotFoundError, ValueError, KeyError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def stop_recorded(path: Path, timeout_s: float = 20.0) -> bool:
    """Stop the process (and the children it spawned) that a PID file names. True if one was stopped."""
    proc = recorded_process(path)
    path.unlink(missing_ok=True)
    if proc is None:
        return False
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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def start(svc: Service) -> psutil.Process:
    """Prepare and start a service in its own session, logging to its log; record its PID file."""
    for port in svc.ports:
        if port_in_use(port):
            raise StackError(
                f"{svc.name}: port {port} on {SETTINGS.host} is already taken by another process "
                f"(not started by rscf). Free it or set the RSCF_*_PORT variable in rscf/settings.py."
            )
    svc.prepare()
    svc.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **svc.env()}
    with open(svc.log, "ab") as log:
        log.write(f"\n==== rscf start {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
        try:
            popen = subprocess.Popen(
                svc.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(SETTINGS.paths.data),
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{svc.name}: could not start ({exc}); log: {svc.log}") from exc
    proc = psutil.Process(popen.pid)
    _write_pid(svc.pid_file, proc)
    return proc


def wait_healthy(svc: Service, proc: psutil.Process, deadline: float) -> None:
    """Wait until the service's health check passes; fail at once, with its log tail, if it exits."""
    while time.monotonic() < deadline:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            raise StackError(
                f"{svc.name}: the process exited during start; log: {svc.log}\n{log_tail(svc.log)}"
            )
        if svc.health():
            return
        time.sleep(0.5)
    raise StackError(f"{svc.name}: not healthy after {svc.start_timeout_s:.0f} s; log: {svc.log}\n{log_tail(svc.log)}")
