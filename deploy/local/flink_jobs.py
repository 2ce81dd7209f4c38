"""The pipeline job on the local Flink cluster: submit with `flink run`, REST for status, stop and savepoints.

Submission goes through the wheel's `flink` script with the local stack's
FLINK_CONF_DIR (so the client sees the cluster's address and Java options);
everything after submission is the REST API, which is what the Web UI and
operators' tools use too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from deploy.local import flink_rest, stack
from deploy.local.flink import flink_dirs, flink_env, flink_home, taskmanager_code_marker
from deploy.local.exec_recorded import start_ticks
from deploy.local.processes import recorded_process
from deploy.local.services import SERVICE_BY_NAME
from jobs.config import JobConfig
from rscf.code_digest import GLOBAL_PARAMETER, code_digest
from rscf.settings import SETTINGS

log = logging.getLogger("rscf.job")

TERMINAL = {"FINISHED", "CANCELED", "FAILED", "SUSPENDED"}
SUBMITTED = re.compile(r"JobID\s+([0-9a-f]{32})")


class ClusterError(RuntimeError):
    """The cluster refused or did not answer; `unavailable` when nothing listens at all."""

    def __init__(self, message: str, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str
    state: str
    start_time: int
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "name": self.name, "state": self.state,
                "start_time": self.start_time, "duration_ms": self.duration_ms}


def savepoint_dir() -> Path:
    return flink_dirs()["savepoints"]


def _request(method: str, path: str, **kw) -> Any:
    url = f"{flink_rest.rest_url()}{path}"
    try:
        r = flink_rest.request(method, path, timeout=kw.pop("timeout", 10.0), **kw)
    except httpx.HTTPError as exc:
        raise ClusterError(f"Flink REST {url} unreachable: {exc}", unavailable=True) from exc
    if r.status_code >= 400:
        raise ClusterError(f"Flink REST {method} {path}: HTTP {r.status_code} {r.text[:500]}")
    return r.json() if r.content else None


def jobs(name: str | None = None) -> list[JobInfo]:
    """Jobs the cluster knows (newest first), optionally only those called `name`."""
    data = _request("GET", "/jobs/overview")
    out = [
        JobInfo(j["jid"], j["name"], j["state"], int(j.get("start-time", 0)), int(j.get("duration", 0)))
        for j in data.get("jobs", [])
        if name is None or j["name"] == name
    ]
    return sorted(out, key=lambda j: j.start_time, reverse=True)


def running(name: str) -> JobInfo | None:
    for job in jobs(name):
        if job.state not in TERMINAL:
            return job
    return None


def all_tasks_running(job_id: str) -> bool:
    detail = _request("GET", f"/jobs/{job_id}")
    vertices = detail.get("vertices", [])
    return detail.get("state") == "RUNNING" and bool(vertices) and all(v["status"] == "RUNNING" for v in vertices)


def flink_command(cfg: JobConfig, from_savepoint: str | None = None, allow_non_restored: bool = False) -> list[str]:
    script = SETTINGS.paths.repo / "jobs" / "content_pipeline.py"
    cmd = ["bash", str(flink_home() / "bin" / "flink"), "run", "-d", "-p", str(cfg.parallelism),
           "-py", str(script), "-pyexec", str(SETTINGS.paths.venv / "bin" / "python"),
           "-pyclientexec", str(SETTINGS.paths.venv / "bin" / "python")]
    if from_savepoint:
        cmd += ["-s", from_savepoint]
        if allow_non_restored:  # an upgrade that removed or re-wired operators (the Web UI's checkbox)
            cmd.append("--allowNonRestoredState")
    return cmd + cfg.to_args()


def job_code(job_id: str) -> str | None:
    """The code digest a job was submitted with (its global job parameter), None if it has none."""
    config = _request("GET", f"/jobs/{job_id}/config") or {}
    return ((config.get("execution-config") or {}).get("user-config") or {}).get(GLOBAL_PARAMETER)


def stale_jobs(found: list[JobInfo], digest: str | None = None,
               submitted_with: Callable[[str], str | None] = job_code) -> list[JobInfo]:
    """The live RSCF jobs submitted with other code than the checkout's now (`rscf.code_digest`).

    A job without a digest was submitted before jobs carried one: older code too. Jobs not named
    rscf-* are not judged."""
    digest = digest or code_digest()
    return [j for j in found if j.state not in TERMINAL and j.name.startswith("rscf")
            and submitted_with(j.job_id) != digest]


STALE_ADVICE = ("runs code older than this checkout (its job graph came back from the HA store): "
                "`rscf job stop --savepoint`, then `rscf job start --from-savepoint PATH`")


def _taskmanager_identity() -> dict | None:
    """PID and start (clock ticks since boot: a wall-clock step does not change it) of the running TaskManager
    (from its PID file), None if none runs."""
    proc = recorded_process(SERVICE_BY_NAME["flink-taskmanager"].pid_file)
    return {"pid": proc.pid, "start_ticks": start_ticks(proc.pid)} if proc is not None else None


def _same_taskmanager(recorded: dict | None, current: dict | None) -> bool:
    """Whether the marker's TaskManager is the one running; a marker from before `start_ticks` (it recorded the
    start in seconds since the epoch) counts as the same by PID, so a TaskManager with old code is restarted."""
    if not isinstance(recorded, dict) or current is None:
        return recorded == current
    if "start_ticks" not in recorded:
        return recorded.get("pid") == current["pid"]
    return recorded == current


def ensure_taskmanager_runs_current_code() -> None:
    """Restart the local TaskManager when the job's code changed since it last imported it.

    In thread mode the TaskManager's embedded interpreter keeps the modules an
    earlier job imported; a job submitted after a code change would run the old
    modules (measured). A fresh TaskManager has imported nothing: the marker
    names the TaskManager process it was written for, so one that supervisord
    restarted after a crash (or `up` started) does not count as stale.
    The restart goes through supervisord (stop, then `up` of that one service).
    """
    marker = taskmanager_code_marker()
    digest = code_digest()
    current_tm = _taskmanager_identity()
    try:
        text = marker.read_text()
    except FileNotFoundError:
        text = None
    try:
        recorded = json.loads(text) if text is not None else None
    except ValueError:  # a bare digest, written before supervision: it was about the TaskManager running now
        recorded = {"digest": text.strip(), "taskmanager": current_tm}
    same_tm = isinstance(recorded, dict) and _same_taskmanager(recorded.get("taskmanager"), current_tm)
    if same_tm and recorded.get("digest") != digest:
        others = [j for j in jobs() if j.state not in TERMINAL]
        if others:
            log.warning(
                "job code changed but %d job(s) still run on the TaskManager; not restarting it: "
                "the new job may run the modules the TaskManager already imported", len(others))
            return
        tm = SERVICE_BY_NAME["flink-taskmanager"]
        stack.stop_service(tm.name)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and (_request("GET", "/overview").get("taskmanagers") or 0) > 0:
            time.sleep(0.5)  # let the JobManager forget the old one before the new one registers
        stack.up(only=[tm.name])
        current_tm = _taskmanager_identity()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"digest": digest, "taskmanager": current_tm}))


def submit(cfg: JobConfig, from_savepoint: str | None = None, wait_s: float = 180.0,
           allow_non_restored: bool = False) -> JobInfo:
    """Submit and wait until every task runs; refuses a second running job of the same name."""
    current = running(cfg.job_name)
    if current is not None:
        raise ClusterError(f"job {cfg.job_name} already {current.state} as {current.job_id}")
    ensure_taskmanager_runs_current_code()
    env = {**os.environ, **flink_env()}
    proc = subprocess.run(flink_command(cfg, from_savepoint, allow_non_restored), capture_output=True, text=True, env=env,
                          timeout=300, cwd=str(SETTINGS.paths.repo))
    match = SUBMITTED.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or match is None:
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        raise ClusterError(f"`flink run` failed (exit {proc.returncode}):\n{tail}")
    job_id = match.group(1)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        detail = _request("GET", f"/jobs/{job_id}")
        if detail["state"] in TERMINAL:
            raise ClusterError(f"job {job_id} ended as {detail['state']} right after submission")
        if all_tasks_running(job_id):
            break
        time.sleep(1.0)
    else:
        # A job that never gets running (failing in open(), restarting in a loop) is cancelled,
        # not left behind: it would hold slots and keep the TaskManager from reloading code.
        try:
            stop(job_id, with_savepoint=False)
        except ClusterError as exc:
            log.warning("could not cancel job %s that never got running: %s", job_id, exc)
        raise ClusterError(f"job {job_id} not running after {wait_s:.0f} s (cancelled; see the TaskManager log)")
    return next(j for j in jobs(cfg.job_name) if j.job_id == job_id)


def _wait_savepoint(job_id: str, trigger: str, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = _request("GET", f"/jobs/{job_id}/savepoints/{trigger}")
        if status["status"]["id"] == "COMPLETED":
            op = status.get("operation") or {}
            if op.get("location"):
                return op["location"]
            raise ClusterError(f"savepoint failed: {str(op.get('failure-cause', op))[:2000]}")
        time.sleep(0.5)
    raise ClusterError(f"savepoint of {job_id} not done after {wait_s:.0f} s")


def stop(job_id: str, with_savepoint: bool, wait_s: float = 180.0) -> str | None:
    """Stop-with-savepoint (returns its path), or cancel without one."""
    if not with_savepoint:
        _request("PATCH", f"/jobs/{job_id}", params={"mode": "cancel"})
        _wait_terminal(job_id, wait_s)
        return None
    body = {"drain": False, "targetDirectory": f"file://{savepoint_dir()}", "formatType": "CANONICAL"}
    trigger = _request("POST", f"/jobs/{job_id}/stop", json=body)["request-id"]
    location = _wait_savepoint(job_id, trigger, wait_s)
    _wait_terminal(job_id, wait_s)
    return location


def savepoint(job_id: str, wait_s: float = 180.0) -> str:
    body = {"cancel-job": False, "target-directory": f"file://{savepoint_dir()}", "formatType": "CANONICAL"}
    trigger = _request("POST", f"/jobs/{job_id}/savepoints", json=body)["request-id"]
    return _wait_savepoint(job_id, trigger, wait_s)


def _wait_terminal(job_id: str, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = _request("GET", f"/jobs/{job_id}")["state"]
        if state in TERMINAL:
            return state
        time.sleep(0.5)
    raise ClusterError(f"job {job_id} still not stopped after {wait_s:.0f} s")
