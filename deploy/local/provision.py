"""What the pipeline needs inside the running services: topics, buckets, schema subjects, Prometheus' config."""

from __future__ import annotations

from typing import Callable

from deploy.local.processes import StackError, recorded_process
from deploy.local.services import SERVICE_BY_NAME, write_prometheus_config
from rscf.settings import SETTINGS


def running(name: str) -> bool:
    """Whether the stack's service `name` runs (its PID file names a live process rscf started)."""
    return recorded_process(SERVICE_BY_NAME[name].pid_file) is not None


def provision(progress: Callable[[str], None] = lambda msg: None) -> None:
    """Topics, buckets and schema subjects the pipeline needs; each step is idempotent.

    A step is skipped when its service is not running, so `up --only` a subset (a private
    Kafka + S3 for a fault test, say) provisions just that subset.
    """
    if running("kafka"):
        from rscf.kafka_clients import TopicCreationError, create_topics, ensure_principals
        from rscf.kafka_security import auth_mode, fixed_principals

        try:
            create_topics(SETTINGS.topics.all())
            acls = ensure_principals(fixed_principals())
        except TopicCreationError as exc:
            raise StackError(str(exc)) from exc
        progress("topics: ready")
        if acls:
            progress(f"kafka principals: {len(fixed_principals())} with {acls} ACLs (RSCF_KAFKA_AUTH={auth_mode()})")
    if running("s3"):
        from rscf.s3 import s3_client

        client = s3_client()
        for bucket in SETTINGS.buckets.all():
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
        progress("buckets: ready")
        _s3_identities_taken(progress)
    write_prometheus_config()  # a config change reaches a running Prometheus without a restart
    if running("prometheus"):
        import httpx

        from rscf.monitoring_security import prometheus_auth

        httpx.post(f"{SETTINGS.prometheus_url}/-/reload", auth=prometheus_auth(), timeout=5)
    if not running("registry"):
        return
    try:
        from schemas.registry import register_all
    except ImportError:
        progress("schemas: registration module not present, skipped")
        return
    ids = register_all(SETTINGS.registry_url)
    progress(f"schemas: {len(ids)} subjects registered")


def _s3_identities_taken(progress: Callable[[str], None], timeout_s: float = 15.0) -> None:
    """A server started before a key existed (a stack from before per-component keys, left running)
    learns every key now: s3.json re-rendered, SIGHUP, then wait until a component's key is taken."""
    import time

    from deploy.local.services import reload_s3_identities
    from rscf.s3 import s3_client
    from rscf.s3_security import WORKER

    reload_s3_identities()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            s3_client(identity=WORKER).list_buckets()
            break
        except Exception as exc:  # noqa: BLE001 - InvalidAccessKeyId until the server has re-read s3.json
            if time.monotonic() > deadline:
                raise StackError(f"the S3 server did not take the components' keys: {exc}") from exc
            time.sleep(0.3)
    progress("s3 identities: ready (rscf credentials s3 NAME)")
