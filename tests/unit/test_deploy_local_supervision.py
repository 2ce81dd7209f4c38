"""supervisord for the local stack, no services needed: the config read back by supervisord's own parser,
restart counting, the PID-file wrapper, and a throwaway supervisord with `sleep`/`sh` programs."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from deploy.local import installed, services, supervision
from deploy.local.exec_recorded import create_time
from deploy.local.processes import recorded_process, stop_recorded


def _parsed(lay: supervision.Layout, programs: list[supervision.Program]):
    """The config as supervisord itself reads it."""
    from supervisor.options import ServerOptions

    supervision.write_config(lay, programs)
    opts = ServerOptions()
    opts.realize(args=["-c", str(lay.conf)])
    return opts, {pc.name: pc for g in opts.process_group_configs for pc in g.process_configs}


def test_config_for_the_service_table(tmp_path, monkeypatch):
    from supervisor.datatypes import RestartUnconditionally

    monkeypatch.setattr(installed, "registry_java", lambda: "java")  # no JDK 21 needed to render it
    lay = supervision.Layout(tmp_path)
    programs = [supervision.program_for(s, 10 * (i + 1)) for i, s in enumerate(services.SERVICES)]
    opts, parsed = _parsed(lay, programs)

    # control: one unix socket in the data dir, owner only; no TCP listener at all
    assert [(c["family"].name, c["file"], c["chmod"]) for c in opts.server_configs] == [
        ("AF_UNIX", str(lay.socket), 0o700)]
    assert "inet_http_server" not in lay.conf.read_text()
    assert (opts.pidfile, opts.logfile, opts.nodaemon) == (str(lay.pidfile), str(lay.log), False)

    assert sorted(parsed, key=lambda n: parsed[n].priority) == [s.name for s in services.SERVICES]
    for svc in services.SERVICES:
        pc = parsed[svc.name]
        argv = shlex.split(pc.command)
        assert argv[1:5] == ["-S", str(supervision.EXEC_RECORDED), str(svc.pid_file), str(svc.log)]
        assert argv[5:] == svc.argv(), svc.name
        assert pc.autorestart is RestartUnconditionally and pc.autostart is False
        assert pc.startsecs >= 3 and pc.startretries == supervision.START_RETRIES
        assert pc.stopasgroup and pc.killasgroup
        assert pc.stdout_logfile == str(svc.log) and pc.redirect_stderr
        assert (pc.environment or {}) == svc.env()
        assert pc.stopwaitsecs == svc.stop_wait_s
    # JVMs that take seconds to start get a startsecs that covers it, so a crash in start is a failed start
    assert all(parsed[n].startsecs >= 15 for n in ("kafka", "flink-jobmanager", "flink-taskmanager"))
    # Flink's processes run in the foreground, so supervisord owns the JVM's PID (the scripts exec)
    for name in ("flink-jobmanager", "flink-taskmanager"):
        assert "start-foreground" in shlex.split(parsed[name].command)


def test_values_are_escaped_or_refused(tmp_path):
    lay = supervision.Layout(tmp_path)
    prog = supervision.Program("p", ["echo", "100%", "a b"], str(tmp_path), str(tmp_path / "p.log"),
                               environment={"X": "1%"})
    _, parsed = _parsed(lay, [prog])
    assert shlex.split(parsed["p"].command) == ["echo", "100%", "a b"]
    assert parsed["p"].environment == {"X": "1%"}
    for bad in (["echo", "x ;comment"], ["echo", "line\nbreak"]):
        with pytest.raises(ValueError):
            supervision.render_config(lay, [supervision.Program("p", bad, "/", "/p.log")])
    with pytest.raises(ValueError):
        supervision.render_config(lay, [supervision.Program("p", ["true"], "/", "/p.log", environment={"Q": 'a"b'})])


def test_socket_path_too_long_is_refused_with_advice(tmp_path):
    lay = supervision.Layout(tmp_path / ("d" * 120))
    with pytest.raises(supervision.SupervisorError, match="RSCF_DATA_DIR"):
        supervision.write_config(lay, [])


def test_restarts_counted_since_supervisord_last_started(tmp_path):
    log = tmp_path / "supervisord.log"
    log.write_text(
        "2026-12-01 10:00:00,000 INFO supervisord started with pid 10\n"
        "2026-12-01 10:00:01,000 WARN exited: redis (terminated by SIGKILL; not expected)\n"
        "2026-12-01 11:00:00,000 INFO supervisord started with pid 20\n"
        "2026-12-01 11:00:01,000 INFO spawned: 'redis' with pid 21\n"
        "2026-12-01 11:00:02,000 WARN exited: redis (terminated by SIGKILL; not expected)\n"
        "2026-12-01 11:00:02,100 WARN exited: flink-taskmanager (exit status 1; not expected)\n"
        "2026-12-01 11:00:03,000 WARN exited: redis (exit status 0; expected)\n"
        "2026-12-01 11:00:04,000 WARN stopped: kafka (terminated by SIGTERM)\n"
    )
    assert supervision.restart_counts(log) == {"redis": 2, "flink-taskmanager": 1}
    assert supervision.restart_counts(tmp_path / "missing.log") == {}


def test_wrapper_start_time_is_psutils():
    assert create_time(os.getpid()) == pytest.approx(psutil.Process().create_time(), abs=0.02)


def _wait(predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout_s} s")


@pytest.fixture
def throwaway(tmp_path):
    """A supervisord of its own (socket in tmp_path) with a sleeper and a program that always crashes."""
    lay = supervision.Layout(tmp_path)
    pid_file = tmp_path / "pids" / "sleeper.pid"
    programs = [
        supervision.Program("sleeper", [sys.executable, "-S", str(supervision.EXEC_RECORDED), str(pid_file),
                                        str(tmp_path / "logs" / "sleeper.log"), "sh", "-c", "echo up; exec sleep 600"],
                            str(tmp_path), str(tmp_path / "logs" / "sleeper.log")),
        supervision.Program("doomed", ["sh", "-c", "echo boom-marker; exit 3"], str(tmp_path),
                            str(tmp_path / "logs" / "doomed.log"), startretries=1),
    ]
    supervision.write_config(lay, programs)
    proc = supervision.start_supervisord(lay)
    try:
        yield lay, pid_file
    finally:
        supervision.shutdown(lay, timeout_s=20)
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_killed_program_is_restarted_counted_and_recorded(throwaway):
    lay, pid_file = throwaway
    supervision.start_program(lay, "sleeper")
    first = _wait(lambda: recorded_process(pid_file), 10)
    assert supervision.program_states(lay)["sleeper"].pid == first.pid  # supervisord owns the PID: exec kept it
    log = lay.data / "logs" / "sleeper.log"
    _wait(lambda: "up\n" in log.read_text(), 10)  # the service writes its own log, after the wrapper's line
    assert "==== started by supervisord" in log.read_text() and f"(pid {first.pid})" in log.read_text()
    fds = {n: os.readlink(f"/proc/{first.pid}/fd/{n}") for n in (0, 1, 2)}
    assert fds == {0: os.devnull, 1: str(log), 2: str(log)}  # not supervisord's pipes
    sig_ignored = int(next(line for line in open(f"/proc/{first.pid}/status") if line.startswith("SigIgn"))
                      .split()[1], 16)
    assert not sig_ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE left ignored by the Python wrapper"
    first.send_signal(signal.SIGKILL)
    second = _wait(lambda: (p := recorded_process(pid_file)) and p.pid != first.pid and p, 10)
    assert supervision.program_states(lay)["sleeper"].pid == second.pid
    assert supervision.restart_counts(lay.log) == {"sleeper": 1}
    # stopped by its PID file: through supervisord, so it stays stopped
    assert stop_recorded(pid_file)
    time.sleep(1.5)
    assert supervision.program_states(lay)["sleeper"].state == "STOPPED"
    assert not second.is_running()


def test_crash_loop_ends_fatal(throwaway):
    lay, _ = throwaway
    supervision.start_program(lay, "doomed")
    _wait(lambda: supervision.program_states(lay)["doomed"].state == "FATAL", 20)
    assert supervision.restart_counts(lay.log)["doomed"] == 2  # the start and its one retry
    assert "boom-marker" in Path(lay.data / "logs" / "doomed.log").read_text()


def test_pool_controller_starts_last_and_may_drain_the_slowest_pool():
    from rscf.pools import POOL_TABLE
    from rscf.settings import SETTINGS

    if not SETTINGS.limits.pool_controller:
        pytest.skip("RSCF_POOL_CONTROLLER=off")
    assert services.SERVICES[-1] is services.POOL_CONTROLLER  # last up, first down: it owns the replicas
    program = supervision.program_for(services.POOL_CONTROLLER, 100)
    assert program.stopwaitsecs > max(p.grace_s for p in POOL_TABLE)  # SIGKILL only after every drain
    assert program.command[-2:] == ["-m", "inference_workers.pool_controller"]
