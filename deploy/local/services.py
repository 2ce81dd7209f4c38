"""The local stack's services: each one's config and argv, and the table.

S3 (SeaweedFS), Redis, Prometheus, Pushgateway and the embedding service are configured here; the
schema registry in `deploy.local.registry` (its proxy in `deploy.local.registry_proxy`); Kafka's in
`deploy.local.kafka_broker`; the Flink cluster's config in `deploy.local.flink`; where the installed
parts live in `deploy.local.installed`.
Every service binds to 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

from deploy.local import flink, flink_rest, installed, monitoring, registry, registry_proxy
from deploy.local.processes import Service, http_ok, port_in_use, recorded_process
from deploy.local.kafka_broker import kafka_dir, kafka_healthy, kafka_java, prepare_kafka
from deploy.local.weed import stack_ports, weed_grpc_tls, weed_mini_argv
from rscf import monitoring_security
from rscf.pools import POOL_TABLE
from rscf.settings import SETTINGS

D = SETTINGS.paths.data
H = SETTINGS.host
P = SETTINGS.ports


# ----------------------------------------------------------------------------- S3 (SeaweedFS)


def _s3_dir() -> Path:
    return D / "s3"


def write_s3_identities() -> None:
    """s3.json (0600): the admin's key (a data dir's from before included) and each component's and known
    tenant's (rscf/s3_security.py), rendered afresh; a running server re-reads it on SIGHUP."""
    from rscf.s3_security import render_identities, server_keys
    from rscf.secrets import write_private

    write_private(_s3_dir() / "s3.json", json.dumps(render_identities(server_keys())).encode())


def _prepare_s3() -> None:
    """The identities, and security.toml in the server's working directory (SeaweedFS reads it from
    there): with its JWT keys the volume and filer HTTP ports refuse unsigned reads and writes, and
    with its certificate the gRPC ports (HTTP + 10000) every client but `weed mini` itself."""
    from rscf.s3_security import jwt_keys, security_toml
    from rscf.secrets import write_private

    _s3_dir().mkdir(parents=True, exist_ok=True)
    write_s3_identities()
    write_private(_s3_dir() / "security.toml", security_toml(jwt_keys(), grpc=weed_grpc_tls()).encode())


def reload_s3_identities() -> bool:
    """Re-render s3.json and have the running server re-read it (SIGHUP); False when it does not run."""
    import signal

    write_s3_identities()
    proc = recorded_process(SERVICE_BY_NAME["s3"].pid_file)
    if proc is None:
        return False
    proc.send_signal(signal.SIGHUP)
    return True


def _s3_argv() -> list[str]:
    return weed_mini_argv(_s3_dir() / "data", stack_ports(), _s3_dir() / "s3.json", SETTINGS.s3.encrypt_at_rest)


def _s3_healthy() -> bool:
    from rscf.s3 import s3_client

    if not port_in_use(P.s3):
        return False
    try:
        s3_client().list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not ready yet
        return False


# ----------------------------------------------------------------------------- Redis


def _prepare_redis() -> None:
    from rscf import redis_security

    (D / "redis").mkdir(parents=True, exist_ok=True)
    redis_security.write_acl()  # users and password hashes; passwords generated once (<data>/secrets/redis)


def _redis_argv() -> list[str]:
    from rscf import redis_security

    # Users: an ACL file written by _prepare_redis (rscf/redis_security.py; README "Redis users and ACLs"),
    # so no password is on this command line. A Redis started before ACLs existed keeps running as it is.
    acl = redis_security.server_args(running=port_in_use(P.redis))
    return [str(installed.redis_server()), "--bind", H, "--port", str(P.redis), "--dir", str(D / "redis"),
            "--appendonly", "yes", "--save", "", "--protected-mode", "yes", "--daemonize", "no",
            "--maxmemory", "512mb", *acl]


def _redis_healthy() -> bool:
    import redis

    from rscf import redis_security

    try:  # as the `health` user (PING only); anonymously on a Redis started before ACLs
        return bool(redis_security.client(redis_security.HEALTH, socket_timeout=1).ping())
    except (redis.RedisError, redis_security.RedisAuthError):
        return False


# ----------------------------------------------------------------------------- Prometheus and Pushgateway


def prometheus_targets_dir() -> Path:
    """Workers drop a file_sd JSON file here when they start, so Prometheus finds them."""
    return D / "prometheus" / "targets"


def write_prometheus_config() -> None:
    base = D / "prometheus"
    prometheus_targets_dir().mkdir(parents=True, exist_ok=True)
    rules = SETTINGS.paths.repo / "deploy" / "prometheus" / "rules.yml"
    auth = monitoring.scrape_security()  # its own password; its certificate for the Pushgateway
    cfg = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules)] if rules.exists() else [],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{H}:{P.prometheus}"]}],
             **auth["prometheus"]},
            {
                "job_name": "flink",
                "honor_labels": True,
                "scrape_interval": "15s",  # Flink pushes every 15 s
                "static_configs": [{"targets": [f"{H}:{P.pushgateway}"]}],
                **auth["pushgateway"],
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


def _prepare_prometheus() -> None:
    monitoring.ensure_certificates()
    monitoring.prepare_prometheus_web()
    write_prometheus_config()


def _prometheus_healthy() -> bool:
    return http_ok(f"{SETTINGS.prometheus_url}/-/ready", auth=monitoring_security.prometheus_auth())


def _pushgateway_healthy() -> bool:
    try:
        ctx = monitoring_security.pushgateway_ssl()
    except (monitoring_security.MonitoringAuthError, OSError):
        return False
    return http_ok(f"{monitoring_security.pushgateway_url()}/-/ready", verify=ctx)


def _prometheus_argv() -> list[str]:
    base = D / "prometheus"
    return [
        "prometheus",
        f"--config.file={base / 'prometheus.yml'}",
        f"--web.config.file={monitoring.web_config_path('prometheus')}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--web.listen-address={H}:{P.prometheus}",
        "--storage.tsdb.retention.time=2d",
        "--web.enable-lifecycle",
    ]


# ----------------------------------------------------------------------------- the HTTP gateway (issue #16)


def _prepare_gateway() -> None:
    """Local CA + server certificate and the token signing key, generated once under the secrets dir (0600)."""
    from gateway.tls import ensure_tls
    from gateway.tokens import TokenService

    ensure_tls()
    TokenService()


def _gateway_healthy() -> bool:
    import httpx

    ca = SETTINGS.paths.secrets / "ca.pem"
    try:  # verified against the stack's own CA, as every client does
        return httpx.get(f"{SETTINGS.gateway_url}/healthz", verify=str(ca), timeout=2).status_code == 200
    except (httpx.HTTPError, OSError):
        return False


# ----------------------------------------------------------------------------- the table, in start order


SERVICES: tuple[Service, ...] = (
    Service("redis", (P.redis,), _redis_argv, _redis_healthy,
            f"redis://{H}:{P.redis} (ACL users: `rscf credentials redis USER`)", prepare=_prepare_redis,
            start_timeout_s=30),
    Service(
        "s3",
        (P.s3, P.weed_master, P.weed_volume, P.weed_filer),
        _s3_argv,
        _s3_healthy,
        f"http://{H}:{P.s3} (S3 API, access key {SETTINGS.s3.access_key}; `rscf credentials s3 NAME`)",
        prepare=_prepare_s3,
        start_timeout_s=60,
        directory=D / "s3",
    ),
    Service(
        "kafka",
        (P.kafka, P.kafka_controller, P.kafka_tls, P.kafka_chaos),
        lambda: kafka_java("kafka.Kafka", "-Xmx768m") + [str(kafka_dir() / "server.properties")],
        kafka_healthy,
        f"{H}:{P.kafka} (bootstrap), {H}:{P.kafka_tls} (TLS, CA {SETTINGS.paths.secrets / 'ca.pem'})",
        prepare=prepare_kafka,
        start_timeout_s=90,
        startsecs=15,
        stop_wait_s=45,  # a controlled shutdown writes the log end offsets; a kill means a log recovery
    ),
    registry.SERVICE,  # Apicurio (deploy/local/registry.py)
    *((Service(
        "registry-proxy",
        (P.registry,),
        registry_proxy.argv,
        lambda: http_ok(f"{SETTINGS.registry_url}/subjects"),
        f"{SETTINGS.registry_url} (reads open; writes need `rscf credentials registry`)",
        prepare=registry_proxy.prepare,
        env=registry_proxy.env,
        start_timeout_s=30,
    ),) if SETTINGS.registry_auth else ()),
    Service(
        "zookeeper",
        (P.zookeeper,),
        flink.zookeeper_argv,
        lambda: port_in_use(P.zookeeper),
        f"{H}:{P.zookeeper} (Flink's HA: leadership, job graphs, checkpoint pointers)",
        prepare=flink.write_zookeeper_config,
        start_timeout_s=60,
        startsecs=5,
    ),
    Service(
        "flink-jobmanager",
        (flink_rest.jobmanager_rest_port(), P.flink_rpc),
        lambda: flink.flink_script("jobmanager.sh", "jobmanager"),
        lambda: flink.overview() is not None,
        f"{flink_rest.rest_url()} (REST, mutual TLS: the Flink REST certificate)" if SETTINGS.flink_rest_auth
        else f"{SETTINGS.flink_url} (Web UI and REST)",
        prepare=flink.write_cluster_config,
        env=flink.flink_env,
        start_timeout_s=90,
        startsecs=15,
    ),
    *((Service(
        "flink-rest-proxy",
        (P.flink_rest,),
        flink_rest.proxy_argv,
        flink_rest.proxy_healthy,
        f"{SETTINGS.flink_url} (Web UI and REST: reads open, writes need `rscf credentials flink`)",
        prepare=flink_rest.prepare_proxy,
        env=flink_rest.proxy_env,
        start_timeout_s=30,
    ),) if SETTINGS.flink_rest_auth else ()),
    Service(
        "flink-taskmanager",
        (),
        lambda: flink.flink_script("taskmanager.sh", "taskmanager"),
        flink.taskmanager_registered,
        "registers with the JobManager (4 slots)",
        prepare=flink.forget_taskmanager_code,
        env=flink.flink_env,
        start_timeout_s=90,
        startsecs=15,
    ),
    Service(
        "embedder",
        (P.embedder,),
        lambda: [installed.venv_bin("python"), "-m", "inference_workers.embedding_service"],
        lambda: http_ok(f"{SETTINGS.embedder_url}/readyz"),
        f"{SETTINGS.embedder_url} (embedding model for moderation and retrieval)",
        env=lambda: {"PYTHONPATH": str(SETTINGS.paths.repo), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        start_timeout_s=180,
        startsecs=10,
    ),
    Service(
        "pushgateway",
        (P.pushgateway,),
        lambda: [
            installed.pushgateway_binary(),
            f"--web.listen-address={H}:{P.pushgateway}",
            f"--web.config.file={monitoring.web_config_path('pushgateway')}",
            # Debian's build persists to /var/lib/prometheus by default: keep nothing (Flink re-pushes).
            "--persistence.file=",
        ],
        _pushgateway_healthy,
        f"{monitoring_security.pushgateway_url()} (Flink metrics are pushed here; client certificate: "
        "rscf credentials prometheus)",
        prepare=monitoring.prepare_pushgateway,
        start_timeout_s=30,
    ),
    Service(
        "prometheus",
        (P.prometheus,),
        _prometheus_argv,
        _prometheus_healthy,
        f"{SETTINGS.prometheus_url} (basic auth: rscf credentials prometheus)",
        prepare=_prepare_prometheus,
        start_timeout_s=30,
    ),
    Service(
        "gateway",
        (P.gateway,),
        lambda: [installed.venv_bin("python"), "-m", "gateway.server"],
        _gateway_healthy,
        f"{SETTINGS.gateway_url} (HTTPS API, CA {SETTINGS.paths.secrets / 'ca.pem'}; docs at /docs)",
        prepare=_prepare_gateway,
        env=lambda: {"PYTHONPATH": str(SETTINGS.paths.repo)},
        start_timeout_s=60,
    ),
)

# The pool controller owns the worker replicas (inference_workers/pool_controller.py): last to start,
# first to stop (`rscf down` drains every replica through it). RSCF_CONTROLLER_POOLS limits its pools.
POOL_CONTROLLER = Service(
    "pool-controller",
    (P.pool_controller,),
    lambda: [installed.venv_bin("python"), "-m", "inference_workers.pool_controller"],
    lambda: http_ok(f"http://{H}:{P.pool_controller}/readyz"),
    f"http://{H}:{P.pool_controller}/metrics (scales worker pools on lag; restarts crashed replicas)",
    env=lambda: {"PYTHONPATH": str(SETTINGS.paths.repo), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    start_timeout_s=30,
    stop_wait_s=max(p.grace_s for p in POOL_TABLE) + 30,  # it drains every replica before it exits
)
if SETTINGS.limits.pool_controller:
    SERVICES = (*SERVICES, POOL_CONTROLLER)

SERVICE_BY_NAME = {s.name: s for s in SERVICES}
