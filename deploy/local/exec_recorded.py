"""Record this process, then become the service: `python -S exec_recorded.py PIDFILE LOGFILE ARGV...`.

supervisord starts every service of the local stack through this wrapper, so
each (re)start, including the ones supervisord makes by itself after a crash,
leaves a fresh PID file that `deploy.local.processes.recorded_process` (and the
benchmarks' CPU meter) can read. `exec` keeps the PID: supervisord still owns
the service's process, signals reach it directly.

The service writes its output straight to its log file, not through a pipe to
supervisord: supervisord does not copy every log line (CPU the benchmarks
would count), and a service outlives a supervisord that died instead of dying
of SIGPIPE at its next log line (measured: Prometheus did).

Standard library only and run with `-S` (no site-packages): it costs ~20 ms per
start. The start time is psutil's formula (boot time + start ticks / clock
ticks), so `recorded_process` matches it exactly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def start_ticks(pid: int) -> int:
    """When a process started, in clock ticks since boot: unlike its start time in seconds since the epoch, it
    does not move when the wall clock is stepped (the kernel's boot time does; measured: 17 s on this VM)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3 of proc(5)
    return int(fields[19])  # field 22, starttime


def create_time(pid: int, ticks: int | None = None) -> float:
    """Start time of a process in seconds since the epoch, as psutil computes it on Linux (``ticks``: its
    `start_ticks`, when already read)."""
    with open("/proc/stat") as f:
        boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
    return (start_ticks(pid) if ticks is None else ticks) / os.sysconf("SC_CLK_TCK") + boot


def write_pid_file(path: str, pid: int) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        ticks = start_ticks(pid)
        json.dump({"pid": pid, "create_time": create_time(pid, ticks), "start_ticks": ticks}, f)
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: exec_recorded.py PIDFILE LOGFILE COMMAND [ARG...]")
    pid_file, log_file, command = argv[0], argv[1], argv[2:]
    pid = os.getpid()
    write_pid_file(pid_file, pid)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"\n==== started by supervisord {stamp} (pid {pid}) ====\n".encode())
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Python ignores these at start and an ignored signal stays ignored across exec: give the
    # service the default dispositions, as subprocess.Popen(restore_signals=True) did.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
