"""One-shot set-up of a docker-compose stack or a Kubernetes cluster's services, as their admin (issue #16).

    python -m deploy.container_init --secrets /run/secrets [--s3-users minio] [--flink-state-bucket B] [--tenants-only]

The only RSCF process handed the Kafka and S3 admin credentials (``RSCF_KAFKA_PRINCIPAL=admin`` with
``RSCF_KAFKA_PASSWORD_FILE``, ``RSCF_S3_SECRET_KEY_FILE`` of the admin key). Idempotent; each step waits for its
service. What ``rscf up`` does for the local stack (deploy/local/provision.py), against given endpoints:

- Kafka: topics; every component's SCRAM credential and ACLs (``rscf.kafka_clients.ensure_principals``, the
  table of rscf/kafka_security.py), the passwords read from ``<secrets>/kafka-<principal>``;
- S3: buckets; with ``--s3-users minio`` a MinIO user and policy per component identity (the actions of
  rscf/s3_security.py as IAM statements), keys from ``<secrets>/s3-<name>``; else the policies are printed;
  the same for every tenant of ``<secrets>/s3-tenants`` (``tenant-<id>``: read and list its own artifact prefix),
  when that file is mounted (compose's init; on Kubernetes the Job rscf-s3-tenants, ``--tenants-only``);
- the schema registry: every subject (schemas/registry.py).

Redis takes its users from the ACL file, Prometheus from its web config (deploy/container_secrets.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from rscf import kafka_security, s3_security
from rscf.secrets import write_private
from rscf.settings import SETTINGS

COMPONENT_S3 = (s3_security.WORKER, s3_security.JOB, s3_security.GATEWAY)
# SeaweedFS action -> S3 API actions (IAM names); List is a bucket-level action.
_OBJECT_ACTIONS = {
    "Read": ("s3:GetObject",),
    "Write": ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"),
    "Tagging": ("s3:GetObjectTagging", "s3:PutObjectTagging"),
}


def _secret_name(kind: str, name: str) -> str:
    from deploy.container_secrets import kafka_name, s3_name

    return kafka_name(name) if kind == "kafka" else s3_name(name)


def read_secret(secrets: Path, kind: str, name: str) -> str:
    return (secrets / _secret_name(kind, name)).read_text().strip()


def tenant_keys(secrets: Path) -> dict[str, str]:
    """``tenant-<id>`` -> secret key, from ``<secrets>/s3-tenants`` (deploy/container_secrets.py); none when absent.
    A name that is no tenant identity is refused: this file must not add a component's or the admin's user."""
    from deploy.container_secrets import S3_TENANTS

    try:
        keys = json.loads((secrets / S3_TENANTS).read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(keys, dict):
        raise SystemExit(f"init: {S3_TENANTS}: not an object of tenant identities")
    for name, key in keys.items():
        if not name.startswith(s3_security.TENANT_PREFIX) or s3_security.check_identity(name) != name:
            raise SystemExit(f"init: {S3_TENANTS}: {name!r} is not a tenant identity")
        if not isinstance(key, str) or len(key) < 16:
            raise SystemExit(f"init: {S3_TENANTS}: {name}'s key is not a key")
    return keys


# ----------------------------------------------------------------------------- S3 policies (pure)


def s3_policy(identity: str, extra_buckets: tuple[str, ...] = ()) -> dict:
    """``identity``'s SeaweedFS actions (rscf/s3_security.py) as an IAM policy; ``extra_buckets``: read,
    write and list besides (the Flink cluster's state bucket on Kubernetes, for the job's identity)."""
    statements: list[dict] = []
    actions = list(s3_security.actions_for(identity))
    actions += [f"{a}:{b}" for b in extra_buckets for a in ("Read", "Write", "List")]
    for entry in actions:
        action, _, resource = entry.partition(":")
        bucket, _, prefix = resource.partition("/")
        if action == "List":
            cond = {"StringLike": {"s3:prefix": [prefix]}} if prefix else None
            statements.append({"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                               "Resource": [f"arn:aws:s3:::{bucket}"], **({"Condition": cond} if cond else {})})
        else:
            statements.append({"Effect": "Allow", "Action": list(_OBJECT_ACTIONS[action]),
                               "Resource": [f"arn:aws:s3:::{bucket}/{prefix or '*'}"]})
    return {"Version": "2012-10-17", "Statement": statements}


# ----------------------------------------------------------------------------- steps


def retry(what: str, step: Callable[[], object], deadline_s: float = 300.0, pause_s: float = 3.0) -> object:
    """``step()`` until it returns (its service may still be starting), at most ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - any failure of a service that is not up yet
            if time.monotonic() > end:
                raise SystemExit(f"init: {what} failed: {exc}") from exc
            print(f"init: {what}: not ready yet ({type(exc).__name__}: {exc}); retrying", flush=True)
            time.sleep(pause_s)


def stage_kafka_passwords(secrets: Path, data: Path | None = None) -> None:
    """Copy each principal's password where ``ensure_principals`` reads it (this process' own data dir, which
    the container sets: RSCF_DATA_DIR); a different password already there is another stack's: refused."""
    for p in kafka_security.fixed_principals():
        path, value = kafka_security.password_file(p, data), read_secret(secrets, "kafka", p)
        if path.exists() and path.read_text().strip() != value:
            raise SystemExit(f"init: {path} holds another password: run with an RSCF_DATA_DIR of its own")
        write_private(path, value.encode())


def kafka(secrets: Path) -> None:
    from rscf.kafka_clients import create_topics, ensure_principals

    if kafka_security.auth_mode() != kafka_security.SCRAM:
        raise SystemExit("init: RSCF_KAFKA_AUTH must be scram (the broker takes SASL/SCRAM only)")
    stage_kafka_passwords(secrets)
    retry("kafka topics", lambda: create_topics(SETTINGS.topics.all()))
    acls = retry("kafka principals", lambda: ensure_principals(kafka_security.fixed_principals()))
    print(f"init: kafka: topics ready, {len(kafka_security.fixed_principals())} principals, {acls} ACLs", flush=True)


def prune_tenant_users(admin, keep: set[str]) -> list[str]:
    """Remove the tenant users (and their policies) that the tenants file no longer names, so a removed
    tenant's S3 key stops working at the next set-up; components' users are never touched."""
    users = json.loads(admin.user_list() or "{}")
    gone = sorted(u for u in users if u.startswith(s3_security.TENANT_PREFIX) and u not in keep)
    for user in gone:
        retry(f"s3 remove user {user}", lambda: admin.user_remove(user))
        try:
            admin.policy_remove(user)
        except Exception as exc:  # noqa: BLE001 - a policy removed by hand already
            print(f"init: s3: policy {user} not removed: {type(exc).__name__}", flush=True)
    return gone


def minio_users(keys: dict[str, str], extra_buckets: tuple[str, ...], prune_tenants: bool = False) -> None:
    """A MinIO user per identity of ``keys`` (identity -> secret key) with its policy (MinIO's admin API, as the
    root user); the job's identity also gets ``extra_buckets``. ``prune_tenants``: the tenants file was
    mounted, so a tenant user it does not name is one that was removed (`prune_tenant_users`)."""
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    access, secret = s3_security.credential(s3_security.ADMIN)
    admin = MinioAdmin(endpoint=SETTINGS.s3_endpoint, credentials=StaticProvider(access, secret),
                       secure=SETTINGS.s3.secure)
    for identity, key in keys.items():
        extra = extra_buckets if identity == s3_security.JOB else ()
        retry(f"s3 policy {identity}", lambda: admin.policy_add(identity, policy=s3_policy(identity, extra)))
        retry(f"s3 user {identity}", lambda: admin.user_add(identity, key))
        try:
            admin.attach_policy([identity], user=identity)
        except Exception as exc:  # noqa: BLE001 - MinIO refuses to attach what is attached already
            if "already" not in str(exc).lower():
                raise
    print(f"init: s3: users {', '.join(keys) or '(none)'} with their policies", flush=True)
    if prune_tenants:
        gone = prune_tenant_users(admin, set(keys))
        print(f"init: s3: removed tenant users {', '.join(gone) or '(none)'}", flush=True)


def s3_users(secrets: Path, mode: str, extra: tuple[str, ...], components: bool = True) -> None:
    """The components' (unless ``components`` is False) and the mounted tenants' S3 users, or their IAM policies."""
    keys = {i: read_secret(secrets, "s3", i) for i in COMPONENT_S3} if components else {}
    keys |= tenant_keys(secrets)
    if mode == "minio":
        from deploy.container_secrets import S3_TENANTS

        minio_users(keys, extra, prune_tenants=(secrets / S3_TENANTS).is_file())
        return
    for identity in keys:
        print(json.dumps({identity: s3_policy(identity, extra if identity == s3_security.JOB else ())}))


def buckets(extra_buckets: tuple[str, ...]) -> None:
    from rscf.s3 import s3_client

    client = s3_client()  # the admin's key (RSCF_S3_SECRET_KEY_FILE)

    def make() -> None:
        for bucket in (*SETTINGS.buckets.all(), *extra_buckets):
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)

    retry("s3 buckets", make)
    print("init: s3: buckets ready", flush=True)


def schemas() -> None:
    from schemas.registry import register_all

    ids = retry("schema registry", lambda: register_all(SETTINGS.registry_url))
    print(f"init: registry: {len(ids)} subjects registered", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.container_init", description=__doc__.split("\n\n")[0])
    p.add_argument("--secrets", type=Path, required=True, help="directory of kafka-<principal>, s3-<name> files")
    p.add_argument("--s3-users", choices=("minio", "print"), default="minio",
                   help="minio: create the components' users; print: print their IAM policies (other S3 services)")
    p.add_argument("--flink-state-bucket", default="", help="a bucket the job's identity may also use (checkpoints)")
    p.add_argument("--tenants-only", action="store_true",
                   help="only the S3 users of <secrets>/s3-tenants (needs the S3 admin key only)")
    args = p.parse_args(argv)
    extra = (args.flink_state_bucket,) if args.flink_state_bucket else ()
    if args.tenants_only:
        s3_users(args.secrets, args.s3_users, extra, components=False)
        return 0
    kafka(args.secrets)
    buckets(extra)
    s3_users(args.secrets, args.s3_users, extra)
    schemas()
    return 0


if __name__ == "__main__":
    sys.exit(main())
