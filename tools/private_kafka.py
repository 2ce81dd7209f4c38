"""A private, throw-away Kafka broker of another version than the stack's (single-node KRaft on
loopback, its own ports and data dir), for benchmarks that need a feature the stack's 4.1.1 lacks:
Kafka 4.4.0's share groups (KIP-932, GA from 4.2) for `rscf bench sharegroups`.

The jars come from Maven Central into the download cache (~/.cache/rscf/jars/kafka-<version>) the
way deploy/local/install.sh fetches the stack's Kafka (profile `kafka-share` of deploy/local/pom.xml;
~45 jars, ~14 s with a warm Maven); nothing is committed. The broker is stopped by its PID.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from rscf.settings import SETTINGS

SHARE_KAFKA_VERSION = "4.4.0"  # the newest on Maven Central (2026-12-02); share groups are GA from 4.2
POM_PROFILE = "kafka-share"  # deploy/local/pom.xml


def jars_dir(version: str = SHARE_KAFKA_VERSION) -> Path:
    return SETTINGS.paths.cache / "jars" / f"kafka-{version}"


def fetch_jars(version: str = SHARE_KAFKA_VERSION, say=lambda m: None) -> Path:
    """The broker's jars in the cache, fetched with Maven (as install.sh does) when missing."""
    out = jars_dir(version)
    if (out / f"kafka_2.13-{version}.jar").exists():
        return out
    say(f"fetching Kafka {version} from Maven Central into {out} (once)")
    out.mkdir(parents=True, exist_ok=True)
    pom = SETTINGS.paths.repo / "deploy" / "local" / "pom.xml"
    cmd = ["mvn", "-q", "-B", "-f", str(pom), f"-P{POM_PROFILE}", "dependency:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={out}", f"-Dmaven.repo.local={SETTINGS.paths.cache / 'm2'}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise RuntimeError("Maven (mvn) is missing: apt-get install maven, or RSCF_KAFKA_SHARE=1 "
                           "deploy/local/install.sh") from exc
    if done.returncode != 0 or not (out / f"kafka_2.13-{version}.jar").exists():
        raise RuntimeError(f"maven could not fetch Kafka {version}: {(done.stderr or done.stdout)[-400:]}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((SETTINGS.host, 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((SETTINGS.host, port)) == 0


class PrivateBroker:
    """`with PrivateBroker(data_dir) as b:` a formatted, started broker at `b.bootstrap`; stopped on exit."""

    def __init__(self, data_dir: Path, version: str = SHARE_KAFKA_VERSION, heap: str = "-Xmx512m",
                 extra: dict[str, str] | None = None, say=lambda m: None) -> None:
        self.dir, self.version, self.heap, self.say = Path(data_dir), version, heap, say
        self.extra = extra or {}
        self.port, self.controller_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{SETTINGS.host}:{self.port}"

    def _java(self, main: str) -> list[str]:
        return ["java", "-Xms128m", self.heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                "-cp", f"{jars_dir(self.version)}/*", main]

    def _write_config(self) -> Path:
        h = SETTINGS.host
        props = {
            "process.roles": "broker,controller", "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{h}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{h}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT", "log.dirs": str(self.dir / "data"),
            "offsets.topic.replication.factor": "1", "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1", "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1", "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0", "group.min.session.timeout.ms": "2000",
            "auto.create.topics.enable": "false",
            # the stack's 2-core thread counts (deploy/local/services.py)
            "num.network.threads": "2", "num.io.threads": "2", "background.threads": "2",
            **self.extra,
        }
        conf = self.dir / "server.properties"
        conf.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.dir / "log4j2.properties").write_text(
            "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = STDOUT\n"
            "appender.stdout.type = Console\nappender.stdout.name = STDOUT\n"
            "appender.stdout.layout.type = PatternLayout\nappender.stdout.layout.pattern = [%d] %p %m (%c)%n\n")
        return conf

    def start(self, timeout_s: float = 60.0) -> "PrivateBroker":
        fetch_jars(self.version, self.say)
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(self._java("kafka.tools.StorageTool") + ["format", "--standalone", "-t", cluster,
                                                                       "-c", str(conf)], capture_output=True, text=True)
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka {self.version}: storage format failed: {(fmt.stderr or fmt.stdout)[-400:]}")
        log = open(self.dir / "broker.log", "ab")
        self.proc = subprocess.Popen(self._java("kafka.Kafka") + [str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.say(f"private Kafka {self.version} (pid {self.proc.pid}) on {self.bootstrap}, data {self.dir}")
        deadline = time.monotonic() + timeout_s
        from confluent_kafka.admin import AdminClient

        admin = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka {self.version} exited ({self.proc.returncode}); log {self.dir / 'broker.log'}")
            try:
                if admin is None and _listening(self.port):  # a client before that only logs refusals
                    admin = AdminClient({"bootstrap.servers": self.bootstrap})
                if admin is not None and admin.list_topics(timeout=2).brokers:
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"kafka {self.version} not ready after {timeout_s:.0f} s; log {self.dir / 'broker.log'}")

    def stop(self) -> None:
        """SIGTERM by PID (a clean shutdown), SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> "PrivateBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
