"""The local Flink cluster: the wheel's distribution, our conf and lib, the cluster config, the code marker.

Configuration keys have one owner each. This writer sets what the cluster's
processes read (addresses, memory, slots, directories, metrics reporter, Web UI,
heartbeats). What the job sets on its own Configuration (`python.*`, checkpoint
interval, mode and directory, state backend, restart strategy, see
`jobs/content_pipeline.flink_configuration`) is not repeated here: the job's
value is the one that applies, on this cluster and in a local MiniCluster alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from deploy.local import flink_rest, monitoring
from rscf.secrets import write_private
from rscf.settings import SETTINGS

H = SETTINGS.host
P = SETTINGS.ports
ZOOKEEPER_TICK_MS = 1000
ZOOKEEPER_SESSION_TIMEOUT_MS = 6000  # ZooKeeper allows 2 to 20 ticks


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent


def flink_dirs() -> dict[str, Path]:
    base = SETTINGS.paths.data / "flink"
    return {
        "base": base,
        "conf": base / "conf",
        "lib": base / "lib",
        "plugins": base / "plugins",
        "checkpoints": base / "checkpoints",
        "savepoints": base / "savepoints",
        "tmp": base / "tmp",
        "ha": base / "ha",
        "zookeeper": SETTINGS.paths.data / "zookeeper",
    }


def flink_env() -> dict[str, str]:
    """Environment for every Flink script (cluster and `flink run`): our conf and lib, the wheel's code."""
    d = flink_dirs()
    return {
        "FLINK_HOME": str(flink_home()),
        "FLINK_CONF_DIR": str(d["conf"]),
        "FLINK_LIB_DIR": str(d["lib"]),
        "FLINK_LOG_DIR": str(SETTINGS.paths.logs),
        "FLINK_PLUGINS_DIR": str(d["plugins"]),
    }


def cluster_config(d: dict[str, Path], conf: dict) -> dict:
    """The cluster's config.yaml: the wheel's `conf` (it keeps env.java.opts.all), updated with ours."""
    conf["jobmanager"]["bind-host"] = H
    conf["jobmanager"]["rpc"]["address"] = H
    conf["jobmanager"]["rpc"]["port"] = P.flink_rpc
    conf["jobmanager"]["memory"]["process"]["size"] = "768m"
    conf["taskmanager"]["bind-host"] = H
    conf["taskmanager"]["host"] = H
    conf["taskmanager"]["numberOfTaskSlots"] = 4
    conf["taskmanager"]["memory"]["process"]["size"] = "2048m"
    # behind the proxy on flink_rest, with mutual TLS, unless RSCF_FLINK_REST_AUTH=0 (flink_rest.py)
    conf["rest"] = {"address": H, "bind-address": H, "port": flink_rest.jobmanager_rest_port()}
    flat = {
        "taskmanager.memory.managed.fraction": 0.2,
        # the default target of a savepoint triggered without one (Web UI); `rscf job` always names it
        "execution.checkpointing.savepoint-dir": f"file://{d['savepoints']}",
        "io.tmp.dirs": str(d["tmp"]),
        "env.pid.dir": str(SETTINGS.paths.pids),
        # The pull reporter cannot bind to loopback only; push to the loopback Pushgateway instead.
        "metrics.reporter.promgateway.factory.class": (
            "org.apache.flink.metrics.prometheus.PrometheusPushGatewayReporterFactory"
        ),
        # The Pushgateway takes only clients with a certificate of the stack's CA: the reporter has no
        # credentials option, but its JVM presents the key store of `monitoring.flink_java_options`.
        "metrics.reporter.promgateway.hostUrl": f"https://{H}:{P.pushgateway}",
        # Flink's log4j-console.properties writes every line to the console and to its own rolling file
        # (`.data/logs/flink--taskexecutor-0-*.log`, 100 MB x 10, what the Web UI shows): the console, i.e.
        # `.data/logs/flink-taskmanager.log`, which nothing rotates, gets warnings and up only (it had
        # grown to 1.8 GB in a day of benchmarks).
        "env.java.opts.jobmanager": f"{monitoring.flink_java_options()} -Dconsole.log.level=WARN",
        "env.java.opts.taskmanager": f"{monitoring.flink_java_options()} -Dconsole.log.level=WARN",
        # One Pushgateway group per process role (jobName is set per process, see flink_script):
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
        "heartbeat.timeout": 30000,
        # A SIGKILLed TaskManager is declared lost after 2 heartbeat RPCs that cannot reach it
        # (heartbeat.rpc-failure-threshold), not after the timeout. Measured on 2 cores, supervisord
        # respawning the TaskManager 0.6 s after the kill: with the default 10 s interval the job left
        # RUNNING after 16.8 s and ran again from its checkpoint after 23.8 s; with 2 s, 3.4 s and 13.7 s.
        # A peer that is only slow still gets the 30 s timeout.
        "heartbeat.interval": 2000,
        "rest.flamegraph.enabled": True,
        # High availability: without it a JobManager that dies takes its jobs along (the restarted one
        # starts empty). With ZooKeeper (run from flink-dist's own shaded server, see zookeeper_argv)
        # the restarted JobManager recovers every job from its latest checkpoint. A dead leader's
        # ZooKeeper session, and with it its leadership, lapses after the session timeout.
        "high-availability.type": "zookeeper",
        "high-availability.zookeeper.quorum": f"{H}:{P.zookeeper}",
        "high-availability.storageDir": f"file://{d['ha']}",
        "high-availability.cluster-id": "/rscf-local",
        "high-availability.zookeeper.client.session-timeout": ZOOKEEPER_SESSION_TIMEOUT_MS,
        "high-availability.jobmanager.port": P.flink_rpc,  # HA picks a random RPC port otherwise
    }
    conf.update(flat)
    conf.update(s3_config())
    conf.update(flink_rest.ssl_config())
    return conf


def s3_config() -> dict:
    """Flink's S3 filesystem (the plugin forwards `s3.*` to Hadoop's `fs.s3a.*`): the stack's object store.

    Path-style addressing and an explicit endpoint serve SeaweedFS on loopback; real S3 is the same
    keys with RSCF_S3_ENDPOINT=s3.<region>.amazonaws.com, RSCF_S3_SECURE=1 and the account's keys.
    The cluster reads and writes s3:// as the job's identity (rscf/s3_security.py: the backfill bucket).
    """
    from rscf.s3_security import JOB, credential

    scheme = "https" if SETTINGS.s3.secure else "http"
    access, secret = credential(JOB)
    return {
        "s3.endpoint": f"{scheme}://{SETTINGS.s3_endpoint}",
        "s3.path.style.access": True,
        "s3.access-key": access,
        "s3.secret-key": secret,
        "s3.endpoint.region": SETTINGS.s3.region,
    }


def write_plugins_dir(d: dict[str, Path]) -> None:
    """Our plugins dir: the wheel's plugins (metrics reporters) plus the S3 filesystem, each in its own folder.

    A plugin must be in place before the cluster's processes start (each plugin folder gets its own class
    loader). Without the downloaded jar (install.sh not run) the cluster starts without s3:// support.
    """
    plugins = d["plugins"]
    if plugins.exists():
        shutil.rmtree(plugins)
    plugins.mkdir(parents=True)
    for src in (flink_home() / "plugins").iterdir():
        if src.is_dir():
            (plugins / src.name).symlink_to(src)
    jar = SETTINGS.paths.s3_plugin_jar
    if jar.exists():
        (plugins / "s3-fs-hadoop").mkdir()
        (plugins / "s3-fs-hadoop" / jar.name).symlink_to(jar)


def write_cluster_config() -> None:
    """Our conf dir (the wheel's files, our config.yaml) and lib dir (the wheel's jars, flink-python, the connector)."""
    import yaml

    d = flink_dirs()
    for key in ("conf", "lib", "checkpoints", "savepoints", "tmp", "ha"):
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
    for jar in list((home / "lib").glob("*.jar")) + [python_jar, SETTINGS.paths.connector_jar]:
        (d["lib"] / jar.name).symlink_to(jar)
    write_plugins_dir(d)

    monitoring.ensure_certificates()  # the Pushgateway reporter's client certificate, in Java key stores
    monitoring.ensure_java_stores()
    conf = yaml.safe_load((home / "conf" / "config.yaml").read_text())  # keeps env.java.opts.all
    # 0600: passwords inside (the job's S3 key s3.secret-key, the key stores')
    write_private(d["conf"] / "config.yaml", yaml.safe_dump(cluster_config(d, conf), sort_keys=False).encode())


def write_zookeeper_config() -> None:
    """A standalone ZooKeeper on loopback for Flink's HA services; no admin server, no four-letter words."""
    zk = flink_dirs()["zookeeper"]
    (zk / "data").mkdir(parents=True, exist_ok=True)
    (zk / "zoo.cfg").write_text("\n".join([
        f"tickTime={ZOOKEEPER_TICK_MS}",
        f"dataDir={zk / 'data'}",
        f"clientPort={P.zookeeper}",
        f"clientPortAddress={H}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=",
        "maxClientCnxns=60",
        "autopurge.snapRetainCount=3",
        "autopurge.purgeInterval=1",
    ]) + "\n")


def zookeeper_argv() -> list[str]:
    """ZooKeeper from flink-dist (it ships the server, shaded, and Flink's `zookeeper.sh` runs this
    class): no download, ~60 MB heap. The quorum-peer wrapper runs a standalone server for one peer."""
    home = flink_home()
    jars = ":".join(str(j) for j in sorted((home / "lib").glob("*.jar")))
    return ["java", "-Xms32m", "-Xmx128m", "-XX:+UseSerialGC", "-Dzookeeper.jmx.log4j.disable=true",
            f"-Dlog4j.configurationFile={home / 'conf' / 'log4j-console.properties'}",
            "-cp", jars, "org.apache.flink.runtime.zookeeper.FlinkZooKeeperQuorumPeer",
            "--zkConfigFile", str(flink_dirs()["zookeeper"] / "zoo.cfg"), "--peerId", "0"]


def taskmanager_code_marker() -> Path:
    """Digest of the job code the running TaskManager has imported (see deploy.local.flink_jobs)."""
    return flink_dirs()["base"] / "taskmanager-code.sha256"


def forget_taskmanager_code() -> None:
    taskmanager_code_marker().unlink(missing_ok=True)  # a fresh interpreter has imported nothing


def flink_script(script: str, role: str) -> list[str]:
    """A cluster process in the foreground (so its PID file names it), pushing metrics as flink-<role>."""
    return ["bash", str(flink_home() / "bin" / script), "start-foreground",
            "-D", f"metrics.reporter.promgateway.jobName=flink-{role}"]


def overview() -> dict | None:
    """The JobManager's /overview, or None while it does not answer."""
    import httpx

    try:
        r = flink_rest.get("/overview", timeout=2)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def taskmanager_registered() -> bool:
    ov = overview()
    return bool(ov and ov.get("taskmanagers", 0) >= 1)
