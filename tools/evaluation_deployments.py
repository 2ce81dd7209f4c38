"""The three deployments `rscf evaluate` compares, each started and stopped here, by PID, on loopback.

- rscf: an isolated copy of the pipeline job on the cluster (own topics) and, per pool of the mix,
  a private pool controller (`inference_workers.pool_controller`, the stack's own service pointed at
  the run's topics, 1..2 echo replicas, 1 replica of a real model) that starts the worker replicas,
  scales them on lag and restarts a killed one by itself (no restart delay is applied to RSCF);
- monolith: `baselines.servers monolith`, one process, the job's steps and the models in-process;
- partial: `baselines.servers front` calling one `model-service` process per pool over HTTP; a killed
  model service is started again after the plan's restart delay (a container restart policy).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import psutil

from rscf.kafka_clients import credentials_env
from rscf.pools import ECHO
from rscf.settings import SETTINGS
from tools import harness
from tools.evaluation_mix import REAL_CYCLE, kind_of, policies, pools, prompt_record

ECHO_MAX_REPLICAS = 2  # the isolated topics have 2 partitions per lane (tools.harness.create_topics)


class Deployment:
    """What the generator needs of a deployment: start, send, kill and restart its model, stop."""

    name = ""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def processes(self) -> list[psutil.Process]: return []
    def kill_model(self) -> None: ...
    def restart_model(self) -> None: ...
    def replicas(self) -> dict[str, int]: return {}


@dataclass
class Proc:
    """A baseline server process, restartable with the same arguments (a restart policy)."""

    argv: list[str]
    port: int
    name: str
    proc: subprocess.Popen | None = None

    def start(self, wait_s: float = 300.0) -> None:
        log = open(SETTINGS.paths.logs / f"eval-{self.name}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "baselines.servers", *self.argv, "--port", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo,
                                     env={**os.environ, "PYTHONPATH": str(SETTINGS.paths.repo)})
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see eval-{self.name}.log")
            try:
                if httpx.get(f"http://{SETTINGS.host}:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy after {wait_s:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        harness.terminate(self.proc, grace_s=10)
        self.proc = None


class HttpDeployment(Deployment):
    """A baseline behind `POST /v1/generate`: the monolith, or the front with its model services."""

    def __init__(self, name: str, procs: list[Proc], front: Proc, model: Proc, pools_of: dict[str, list[Proc]]):
        self.name, self.procs, self.front, self.model, self.pools_of = name, procs, front, model, pools_of

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(p.proc.pid) for p in self.procs if p.proc and p.alive()]

    def kill_model(self) -> None:
        self.model.kill()

    def restart_model(self) -> None:
        self.model.start()

    def replicas(self) -> dict[str, int]:
        return {pool: sum(1 for p in procs if p.alive()) for pool, procs in self.pools_of.items()}

    @property
    def url(self) -> str:
        return f"http://{SETTINGS.host}:{self.front.port}/v1/generate"


def monolith(mix: str = "echo") -> HttpDeployment:
    ps = pools(mix)
    proc = Proc(["monolith", "--pools", ",".join(ps), "--policies", json.dumps(policies())],
                harness.free_port(), "monolith")
    return HttpDeployment("monolith", [proc], proc, proc, {p: [proc] for p in ps})


def partial(mix: str = "echo") -> HttpDeployment:
    models = {p: Proc(["model-service", "--pool", p], harness.free_port(), f"model-{p}") for p in pools(mix)}
    services = [f"{p}=http://{SETTINGS.host}:{m.port}" for p, m in models.items()]
    front = Proc(["front", *[a for s in services for a in ("--service", s)], "--policies", json.dumps(policies())],
                 harness.free_port(), "front")
    return HttpDeployment("partial", [*models.values(), front], front, models[ECHO], {p: [m] for p, m in models.items()})


class PoolController:
    """A private pool controller for one pool of the run: own data dir (its replicas' PID files), the
    run's topics, the stack's object storage credentials."""

    def __init__(self, pool: str, requests_topic: str, results_topic: str, group: str, max_replicas: int):
        self.pool = pool
        self.data = Path(tempfile.mkdtemp(prefix=f"rscf-eval-{pool}-"))
        self.port_base = harness.free_port_block(max_replicas, start=47_300)
        self.argv = [sys.executable, "-m", "inference_workers.pool_controller", "--pool", pool,
                     "--requests-topic", requests_topic, "--group", group, "--metrics-port-base", str(self.port_base),
                     "--port", "-1", "--interval", "1", "--min", "1", "--max", str(max_replicas), "--no-predictive",
                     "--cooldown", "20", "--stabilization", "10", "--scale-down-period", "5", "--cpu-budget", "64",
                     "--worker-arg=--results-topic", f"--worker-arg={results_topic}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "RSCF_DATA_DIR": str(self.data), "PYTHONPATH": str(SETTINGS.paths.repo),
               "RSCF_S3_SECRET_KEY": SETTINGS.s3.secret_key, **credentials_env()}
        log = open(SETTINGS.paths.logs / f"eval-controller-{self.pool}.log", "ab")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)

    def replica_pids(self) -> list[int]:
        """PIDs of the live replicas, from the PID files the controller writes."""
        out = []
        for pf in sorted((self.data / "pids").glob(f"worker-{self.pool}-*.pid")):
            try:
                pid = int(pf.read_text().strip())
            except (OSError, ValueError):
                continue
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        return out

    def stop(self) -> None:
        """SIGTERM: the controller drains its replicas before it exits (its own shutdown path)."""
        harness.terminate(self.proc, grace_s=90)
        self.proc = None
        for pid in self.replica_pids():  # a controller that could not drain leaves none behind
            os.kill(pid, signal.SIGKILL)


class RscfDeployment(Deployment):
    """An isolated copy of the pipeline job on the cluster; its pools run by private pool controllers."""

    name = "rscf"

    def __init__(self, mix: str = "echo") -> None:
        self.mix = mix
        self.stack = ExitStack()
        self.run: harness.IsolatedRun | None = None
        self.controllers: dict[str, PoolController] = {}

    def start(self) -> None:
        self.run = self.stack.enter_context(harness.isolated_run("eval"))
        cfg = self.run.cfg
        for policy in policies():
            event = harness.policy_event(policy["tenant_id"], policy["features"], policy["rate_per_s"],
                                         policy["burst"], policy["tier"])
            self.run.producer.control(event)
        self.run.producer.flush()
        self.run.job.start()
        for pool in pools(self.mix):
            ctl = PoolController(pool, cfg.requests(pool), cfg.results, f"eval-{pool}-{cfg.group_id}",
                                 ECHO_MAX_REPLICAS if pool == ECHO else 1)
            ctl.start()
            self.controllers[pool] = ctl
            self.stack.callback(ctl.stop)
        warm_id = f"warm{uuid.uuid4().hex[:4]}"
        kinds = {kind_of(i, self.mix): i for i in range(len(REAL_CYCLE))}
        warm = [prompt_record(i, warm_id, self.mix) for i in kinds.values()]
        for record in warm:
            self.run.producer.prompt(record)
        self.run.producer.flush()
        self.run.reader.until(lambda g: all(r["request_id"] in g.content for r in warm), 300)

    def stop(self) -> None:
        self.stack.close()

    def processes(self) -> list[psutil.Process]:
        from deploy.local import stack as local_stack

        pids = [*local_stack.stack_pids()]
        for ctl in self.controllers.values():
            if ctl.proc is not None and ctl.proc.poll() is None:
                pids.append(ctl.proc.pid)
            pids += ctl.replica_pids()
        return [psutil.Process(p) for p in pids if psutil.pid_exists(p)]

    def kill_model(self) -> None:
        """SIGKILL one echo replica: its pool controller notices and starts another."""
        pids = self.controllers[ECHO].replica_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)

    def restart_model(self) -> None:
        """Nothing to do: the pool controller restarts the replica (RSCF is not given a restart delay)."""

    def replicas(self) -> dict[str, int]:
        return {pool: len(ctl.replica_pids()) for pool, ctl in self.controllers.items()}


DEPLOYMENT_FACTORIES: dict[str, Callable[[str], Deployment]] = {
    "rscf": RscfDeployment, "monolith": monolith, "partial": partial,
}
