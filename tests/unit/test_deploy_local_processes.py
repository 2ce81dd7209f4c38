"""PID files of the local stack (no services needed): a recorded PID counts only while it is the same process."""

from __future__ import annotations

import json
import os
import socket

import psutil

from deploy.local.processes import port_bindable, port_in_use, recorded_process, stop_recorded


def test_recorded_process_is_the_one_started_not_a_reused_pid(tmp_path):
    me = psutil.Process(os.getpid())
    pid_file = tmp_path / "svc.pid"
    pid_file.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
    assert recorded_process(pid_file).pid == me.pid
    pid_file.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 3600}))
    assert recorded_process(pid_file) is None  # same PID, another start time: not ours
    pid_file.write_text("not json")
    assert recorded_process(pid_file) is None
    assert recorded_process(tmp_path / "missing.pid") is None


def test_a_wall_clock_step_does_not_make_a_running_service_a_stranger(tmp_path):
    """Seen on this VM: the wall clock stepped 17 s after `rscf up`, so every service's start time in seconds
    since the epoch moved by 17 s, no PID file matched, and the benchmark's CPU meter saw no service at all."""
    from deploy.local.exec_recorded import start_ticks

    me = psutil.Process(os.getpid())
    pid_file = tmp_path / "svc.pid"
    pid_file.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 17, "start_ticks": start_ticks(me.pid)}))
    assert recorded_process(pid_file).pid == me.pid
    pid_file.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time(), "start_ticks": start_ticks(me.pid) - 1}))
    assert recorded_process(pid_file) is None  # started at another tick: a reused PID, not ours


def test_the_taskmanager_marker_survives_a_clock_step_and_an_old_marker_matches_by_pid():
    from deploy.local.flink_jobs import _same_taskmanager

    now = {"pid": 41, "start_ticks": 1000}
    assert _same_taskmanager({"pid": 41, "start_ticks": 1000}, now)
    assert not _same_taskmanager({"pid": 41, "start_ticks": 999}, now) and not _same_taskmanager(None, now)
    assert _same_taskmanager({"pid": 41, "create_time": 1.5e9}, now)  # written before start_ticks: same PID
    assert not _same_taskmanager({"pid": 40, "create_time": 1.5e9}, now)
    assert _same_taskmanager(None, None)


def test_stop_recorded_removes_a_stale_pid_file_and_stops_nothing(tmp_path):
    pid_file = tmp_path / "svc.pid"
    me = psutil.Process(os.getpid())
    pid_file.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 3600}))
    assert stop_recorded(pid_file) is False
    assert not pid_file.exists() and me.is_running()


def test_a_port_held_by_a_connection_is_not_listened_on_yet_cannot_be_bound():
    """What crashed a test broker in CI: its TLS port was a client connection's local end (ephemeral range)."""
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
        held = client.getsockname()[1]
        assert not port_in_use(held)  # nothing listens there...
        assert not port_bindable(held)  # ...and still a server could not start on it
        assert port_in_use(server.getsockname()[1]) and not port_bindable(server.getsockname()[1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert port_bindable(free)
