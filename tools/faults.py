"""The faults of `rscf chaos`: each a small class that injects one failure and heals it.

A fault runs in its own thread while the load goes on: `inject`, then `hold_s` seconds during
which `observe` notes whether a killed service came back by itself (a supervised stack), then
`heal`, which puts the stack back the way the next fault expects it (restarting a service with
`rscf up --only <service>` only when nothing else did). Only processes the stack recorded in its
PID files, and the fault run's own worker processes, are ever signalled.

The context a fault gets (`tools.chaos.FaultContext`) offers: the session (its workers, job,
topics and proxies), `send_prompt`/`send_raw` for faults that are records rather than
failures, `event(name)` for the timeline and `note(text)` for the row.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

from deploy.local import flink_rest
from rscf.settings import SETTINGS

# ----------------------------------------------------------------------------- stack processes


def _service(name: str):
    from deploy.local.services import SERVICE_BY_NAME

    return SERVICE_BY_NAME[name]


def service_process(name: str) -> psutil.Process | None:
    """The live process the stack recorded for a service (None when it is not running)."""
    from deploy.local.processes import recorded_process

    return recorded_process(_service(name).pid_file)


def kill_service(name: str) -> set[int]:
    """SIGKILL a service's recorded process and its descendants; the PIDs signalled."""
    proc = service_process(name)
    if proc is None:
        raise FaultError(f"{name}: no running process recorded in {_service(name).pid_file}")
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    return {p.pid for p in family}


def service_healthy(name: str) -> bool:
    try:
        return bool(_service(name).health())
    except Exception:  # noqa: BLE001 - a health probe that raises means not healthy
        return False


def restart_service(name: str) -> None:
    """What an operator types: `rscf up --only <name>` (waits until healthy)."""
    from deploy.local import stack

    stack.up(only=[name])


def taskmanager_ids() -> set[str]:
    """Ids of the TaskManagers the JobManager has registered (empty when it does not answer)."""
    import httpx

    try:
        body = flink_rest.get("/taskmanagers", timeout=3).json()
        return {tm["id"] for tm in body.get("taskmanagers", [])}
    except (httpx.HTTPError, ValueError, KeyError):
        return set()


class FaultError(RuntimeError):
    """The fault could not be injected (nothing to kill, no proxy): the row says so."""


# ----------------------------------------------------------------------------- Toxiproxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind((SETTINGS.host, 0))
        return s.getsockname()[1]


class Toxiproxy:
    """A Toxiproxy server we start (from tools/install_toxiproxy.sh) and drive over its HTTP API."""

    def __init__(self, binary: str, log_path) -> None:
        import httpx

        self.port = free_port()
        self.api = f"http://{SETTINGS.host}:{self.port}"
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([binary, "-host", SETTINGS.host, "-port", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.api, timeout=5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.http.get("/version").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise FaultError(f"toxiproxy did not answer on {self.api} within 20 s (log: {log_path})")

    def proxy(self, name: str, upstream: str, port: int = 0) -> int:
        """Create a proxy to `upstream` on loopback `port` (0: a free one); returns its port."""
        r = self.http.post("/proxies", json={"name": name, "listen": f"{SETTINGS.host}:{port}", "upstream": upstream,
                                             "enabled": True})
        r.raise_for_status()
        return int(r.json()["listen"].rsplit(":", 1)[1])

    def add_toxic(self, proxy: str, name: str, kind: str, attributes: dict[str, Any], stream: str) -> None:
        r = self.http.post(f"/proxies/{proxy}/toxics", json={"name": name, "type": kind, "stream": stream,
                                                             "toxicity": 1.0, "attributes": attributes})
        r.raise_for_status()

    def remove_toxic(self, proxy: str, name: str) -> None:
        self.http.delete(f"/proxies/{proxy}/toxics/{name}")

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def install_toxiproxy() -> str:
    """The toxiproxy-server binary (built once into the cache by tools/install_toxiproxy.sh)."""
    script = SETTINGS.paths.repo / "tools" / "install_toxiproxy.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "RSCF_CACHE_DIR": str(SETTINGS.paths.cache)})
    if out.returncode != 0:
        raise FaultError(f"toxiproxy install failed: {out.stderr.strip()[-500:]}")
    return out.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- faults


@dataclass
class Fault(ABC):
    name: str
    summary: str
    hold_s: float = 0.0
    drain_s: float = 90.0  # after the load: how long to wait for the last final before calling it missing
    proxy: str | None = None  # the Toxiproxy proxy this fault needs (the job then talks to that dependency through it)

    def run(self, ctx, stop: Callable[[], bool] = lambda: False) -> None:
        self.inject(ctx)
        ctx.event("injected")
        deadline = time.monotonic() + self.hold_s
        while time.monotonic() < deadline and not stop():
            self.observe(ctx)
            time.sleep(0.5)
        self.heal(ctx)
        ctx.event("healed")

    @abstractmethod
    def inject(self, ctx) -> None:
        """Break something; `run` records the moment and holds the fault for hold_s."""

    def observe(self, ctx) -> None:
        """Called every 0.5 s while the fault holds."""

    def heal(self, ctx) -> None:
        """Undo what is still broken after hold_s."""


@dataclass
class ServiceKill(Fault):
    """SIGKILL a stack service. If it comes back by itself within hold_s (a supervised stack), the row
    says so; otherwise heal starts it with `rscf up --only <service>` and the row says that."""

    service: str = ""
    killed: set[int] = field(default_factory=set)
    old_taskmanagers: set[str] = field(default_factory=set)
    back: bool = False

    def inject(self, ctx) -> None:
        self.back = False
        self.old_taskmanagers = taskmanager_ids() if self.service == "flink-taskmanager" else set()
        self.killed = kill_service(self.service)
        ctx.note(f"SIGKILL {self.service} (pids {sorted(self.killed)})")

    def is_back(self) -> bool:
        if self.service == "flink-taskmanager":  # the JobManager keeps a dead TaskManager listed until its heartbeat times out
            return bool(taskmanager_ids() - self.old_taskmanagers)
        proc = service_process(self.service)
        return (proc is None or proc.pid not in self.killed) and service_healthy(self.service)

    def observe(self, ctx) -> None:
        if not self.back and self.is_back():
            self.back = True
            ctx.event("service_back")
            ctx.healed_by = "itself"

    def restarted_elsewhere(self) -> bool:
        """A new process runs for the service (a supervisor restarted it) but is not healthy yet."""
        proc = service_process(self.service)
        return proc is not None and proc.pid not in self.killed

    def heal(self, ctx) -> None:
        self.observe(ctx)
        deadline = time.monotonic() + _service(self.service).start_timeout_s
        while not self.back and self.restarted_elsewhere() and time.monotonic() < deadline:
            time.sleep(0.5)
            self.observe(ctx)
        if self.back:
            return
        ctx.note(f"{self.service} not back after {self.hold_s:.0f} s: rscf up --only {self.service}")
        restart_service(self.service)
        self.back = True
        ctx.event("service_back")
        ctx.healed_by = f"rscf up --only {self.service}"
        if self.service == "flink-jobmanager":  # the surviving TaskManager must find the new JobManager
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not taskmanager_ids():
                time.sleep(1)
            if not taskmanager_ids():
                ctx.note("no TaskManager registered 60 s after the JobManager restart: restarting it")
                kill_service("flink-taskmanager")
                restart_service("flink-taskmanager")


@dataclass
class WorkerKill(Fault):
    """SIGKILL one of the run's echo workers; after hold_s a replacement starts (a replica supervisor's job)."""

    def inject(self, ctx) -> None:
        w = ctx.session.workers[0]
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(10)
        ctx.note(f"SIGKILL worker pid {w.proc.pid}")

    def heal(self, ctx) -> None:
        dead = [w for w in ctx.session.workers if w.proc.poll() is not None]
        for w in dead:
            ctx.session.replace_worker(w)
        ctx.healed_by = "harness (replacement worker)"


@dataclass
class WorkerHang(Fault):
    """SIGSTOP one worker (a hung process: no heartbeats, no polls) for hold_s, then SIGCONT."""

    def inject(self, ctx) -> None:
        self.worker = ctx.session.workers[0]
        self.worker.proc.send_signal(signal.SIGSTOP)
        ctx.note(f"SIGSTOP worker pid {self.worker.proc.pid} for {self.hold_s:.0f} s")

    def heal(self, ctx) -> None:
        self.worker.proc.send_signal(signal.SIGCONT)
        ctx.healed_by = "SIGCONT"


@dataclass
class WorkerSlow(Fault):
    """One worker replaced by one slower than the request timeout for hold_s, then by a normal one again."""

    delay_ms: float = 0.0

    def inject(self, ctx) -> None:
        self.delay_ms = SETTINGS.limits.request_timeout_ms + 2000
        self.slow = ctx.session.replace_worker(ctx.session.workers[0], delay_ms=self.delay_ms, grace_s=5)
        ctx.note(f"worker with {self.delay_ms / 1000:.0f} s per batch (request timeout "
                 f"{SETTINGS.limits.request_timeout_ms / 1000:.0f} s)")

    def heal(self, ctx) -> None:
        ctx.session.replace_worker(self.slow, grace_s=2)
        ctx.healed_by = "harness (normal worker)"


@dataclass
class PoisonPrompts(Fault):
    """Prompts that crash the model (the chaos worker raises on its poison marker)."""

    count: int = 3

    def inject(self, ctx) -> None:
        from tools.chaos_worker import POISON_MARKER

        for i in range(self.count):
            ctx.send_prompt("chaos-echo", f"{self.name}-poison-{i}", f"{POISON_MARKER} please crash the model ({i})")
        ctx.note(f"{self.count} poison prompts")


@dataclass
class OversizeRecord(Fault):
    """One undecodable record of ~1 MB on the prompts topic: it must become one dead letter, nothing else."""

    # Just under the broker's message.max.bytes (1,048,588 per batch): the record itself is accepted,
    # while a dead letter that carries it whole is larger than the job producer's max.request.size (1 MiB).
    size: int = 1_048_400

    def inject(self, ctx) -> None:
        import os

        ctx.send_raw(b"\x00\xff" + os.urandom(self.size - 2), key="chaos-echo")
        ctx.note(f"{self.size:,} undecodable bytes on the prompts topic")


@dataclass
class IdCollision(Fault):
    """Two tenants use the same request_id: both must get their own final."""

    pairs: int = 5

    def inject(self, ctx) -> None:
        for i in range(self.pairs):
            rid = f"{self.name}-shared-{i}"
            ctx.send_prompt("chaos-echo", rid, f"tenant A asks question {i}")
            ctx.send_prompt("chaos-echo-b", rid, f"tenant B asks question {i}")
        ctx.note(f"{self.pairs} request ids used by two tenants each")


@dataclass
class ProxyToxic(Fault):
    """A Toxiproxy toxic on the job's connection to a dependency (both directions) for hold_s."""

    toxic: str = "latency"
    attributes: dict[str, Any] = field(default_factory=dict)

    def inject(self, ctx) -> None:
        proxies = ctx.session.toxiproxy
        if proxies is None or self.proxy not in ctx.session.proxied:
            raise FaultError(f"no Toxiproxy proxy for {self.proxy} in this session")
        for stream in ("downstream", "upstream"):
            proxies.add_toxic(self.proxy, f"{self.name}-{stream}", self.toxic, self.attributes, stream)
        ctx.note(f"toxiproxy {self.toxic} {self.attributes} on job -> {self.proxy} for {self.hold_s:.0f} s")

    def heal(self, ctx) -> None:
        for stream in ("downstream", "upstream"):
            ctx.session.toxiproxy.remove_toxic(self.proxy, f"{self.name}-{stream}")
        ctx.healed_by = "toxic removed"


def _timeout_drain() -> float:
    """A request stuck on a slow worker ends after every attempt timed out (plus backoff and slack)."""
    return SETTINGS.limits.max_attempts * SETTINGS.limits.request_timeout_ms / 1000 + 45


def catalogue() -> dict[str, Fault]:
    """Every fault, in the default matrix order (those that may leave the job broken come last)."""
    faults: list[Fault] = [
        WorkerKill("worker-kill", "SIGKILL one of two echo workers (a replacement starts 2 s later)", hold_s=2),
        WorkerHang("worker-hang", "SIGSTOP one worker for 20 s, then SIGCONT", hold_s=20),
        PoisonPrompts("poison", "3 prompts that crash the model"),
        IdCollision("id-collision", "2 tenants, same request_id (5 pairs)"),
        ProxyToxic("redis-latency", "+500 ms each way job<->Redis (Toxiproxy) for 20 s", hold_s=20, proxy="redis",
                   toxic="latency", attributes={"latency": 500, "jitter": 50}),
        ProxyToxic("redis-partition", "job<->Redis blackholed (Toxiproxy timeout) for 20 s", hold_s=20, proxy="redis",
                   toxic="timeout", attributes={"timeout": 0}),
        ProxyToxic("registry-partition", "job<->schema registry blackholed (Toxiproxy) for 20 s", hold_s=20,
                   proxy="registry", toxic="timeout", attributes={"timeout": 0}),
        ProxyToxic("kafka-latency", "+200 ms each way job<->Kafka (Toxiproxy) for 20 s", hold_s=20, proxy="kafka",
                   toxic="latency", attributes={"latency": 200, "jitter": 20}),
        ProxyToxic("kafka-partition", "job<->Kafka blackholed (Toxiproxy timeout) for 20 s", hold_s=20,
                   proxy="kafka", toxic="timeout", attributes={"timeout": 0}, drain_s=150),
        ServiceKill("s3-down", "object storage SIGKILLed, down 30 s", hold_s=30, service="s3"),
        ServiceKill("redis-down", "Redis SIGKILLed, down 30 s", hold_s=30, service="redis"),
        ServiceKill("registry-down", "schema registry SIGKILLed, down 30 s", hold_s=30, service="registry"),
        ServiceKill("embedder-down", "embedding service SIGKILLed, down 30 s", hold_s=30, service="embedder",
                    drain_s=150),
        WorkerSlow("worker-slow", "one worker slower than the request timeout",
                   hold_s=SETTINGS.limits.request_timeout_ms / 1000 + 5, drain_s=_timeout_drain()),
        ServiceKill("taskmanager-kill", "SIGKILL the TaskManager", hold_s=10, service="flink-taskmanager",
                    drain_s=120),
        ServiceKill("kafka-kill", "SIGKILL the Kafka broker, then restart", hold_s=10, service="kafka", drain_s=120),
        ServiceKill("jobmanager-kill", "SIGKILL the JobManager", hold_s=10, service="flink-jobmanager", drain_s=90),
        OversizeRecord("oversize-record", "1,048,400-byte undecodable record on the prompts topic"),
    ]
    return {f.name: f for f in faults}


FAULT_NAMES = tuple(catalogue())
# The reduced matrix CI runs (tests/integration/test_tools_chaos_matrix.py): cheap, and each one a promise of issue #13.
CI_FAULTS = ("worker-kill", "poison", "id-collision", "taskmanager-kill", "oversize-record")
