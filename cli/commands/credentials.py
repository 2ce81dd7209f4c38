"""`rscf credentials kafka PRINCIPAL [--tls] [--json|--java]`: a client configuration for this stack's broker
(`--tls`: its SASL_SSL listener, verified against the stack's CA; README "Kafka over TLS");
`rscf credentials prometheus [--user U] [--json]`: Prometheus' basic auth and the Pushgateway's client
certificate (rscf/monitoring_security.py, README "Prometheus and Pushgateway authentication").
`rscf credentials redis USER [--json]`: how an ACL user connects to this stack's Redis.
`rscf credentials s3 NAME [--json]`: an S3 key (access key, secret key, endpoint) of this stack.
`rscf credentials flink [--json]`: the operator's password for writes to Flink's REST API (deploy/local/flink_rest.py).

The one command that prints a Kafka password (they live in ``<data>/secrets/kafka``, 0600). The
output is what a plain confluent-kafka client takes as it is (`Consumer(json.load(f) | {...})`), or
Java client properties (`--java`, for the Kafka CLI tools). A ``tenant-<id>`` principal is created
on the broker on first use (SCRAM credentials + its ACLs); every other principal exists after
`rscf up`, and is refreshed here too (idempotent). Principals and what each may do:
rscf/kafka_security.py, README "Kafka authentication".
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import unquote, urlsplit

from cli.main import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE, json_parent


def _acl_lines(principal: str) -> list[str]:
    from rscf.kafka_security import ADMIN, acls_for

    if principal == ADMIN:
        return ["super user: everything"]
    return [f"{a.operation} {a.resource} {a.name}{'*' if a.pattern == 'PREFIXED' else ''}" for a in acls_for(principal)]


def cmd_kafka(args: argparse.Namespace) -> int:
    from rscf import kafka_clients, kafka_security
    from rscf.settings import SETTINGS

    try:
        principal = kafka_security.check_principal(args.principal)
        mode = kafka_security.auth_mode()
    except kafka_security.KafkaAuthError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if mode == kafka_security.NONE:
        print(f"note: this stack's broker takes no credentials (RSCF_KAFKA_AUTH=none): anyone on {SETTINGS.host} "
              "may connect; see README 'Kafka authentication'", file=sys.stderr)
    else:
        try:  # the broker learns (or re-learns) this principal's credentials and ACLs
            kafka_clients.ensure_principals([principal], timeout_s=args.timeout)
        except Exception as exc:  # noqa: BLE001 - KafkaException, TopicCreationError: broker unreachable
            print(f"kafka at {SETTINGS.kafka_bootstrap}: could not register {principal}: {str(exc)[:300]}",
                  file=sys.stderr)
            return EXIT_UNAVAILABLE
    tls = args.tls or SETTINGS.kafka_auth.tls
    bootstrap = kafka_security.tls_bootstrap() if args.tls else SETTINGS.kafka_bootstrap
    if args.tls:
        from deploy.local.processes import port_in_use

        if not port_in_use(SETTINGS.ports.kafka_tls):
            print(f"note: nothing listens on {bootstrap} yet: a broker started before its TLS listener existed "
                  "gets it when it restarts (`rscf down` + `rscf up`)", file=sys.stderr)
    if args.java:
        conf = {"bootstrap.servers": bootstrap, **kafka_security.java_security(principal, tls)}
    else:
        conf = kafka_clients.client_config(principal, bootstrap, **kafka_clients.client_security(principal, tls=tls))
    if args.json:
        print(json.dumps(conf, indent=2))
    else:
        print("\n".join(f"{k}={v}" for k, v in conf.items()))
    print(f"{principal} may: " + "; ".join(_acl_lines(principal)), file=sys.stderr)
    return EXIT_OK


def cmd_prometheus(args: argparse.Namespace) -> int:
    from rscf import monitoring_security as ms
    from rscf.settings import SETTINGS

    try:
        user, pw = ms.prometheus_auth(args.user)
        cert = ms.client_cert(args.cert)
    except ms.MonitoringAuthError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not cert.cert.exists():
        print(f"note: no certificates yet under {ms.monitoring_dir()}: `rscf up` makes them", file=sys.stderr)
    out = {"prometheus_url": SETTINGS.prometheus_url, "username": user, "password": pw,
           "pushgateway_url": ms.pushgateway_url(), "ca_file": str(ms.ca_file()),
           "cert_file": str(cert.cert), "key_file": str(cert.key)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(f"{k}={v}" for k, v in out.items()))
        print(f"curl -u {user}:\"$PASSWORD\" '{SETTINGS.prometheus_url}/api/v1/query?query=up'\n"
              f"curl --cacert {out['ca_file']} --cert {out['cert_file']} --key {out['key_file']} "
              f"{out['pushgateway_url']}/api/v1/metrics", file=sys.stderr)
    return EXIT_OK


def cmd_redis(args: argparse.Namespace) -> int:
    from rscf import redis_security
    from rscf.settings import SETTINGS

    try:
        user = redis_security.user(args.user)
        url = redis_security.url(user.name)
    except redis_security.RedisAuthError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    acl = redis_security.auth_mode() == redis_security.ACL
    if not acl:
        print(f"note: this data dir's Redis has no ACL users yet (started before they existed, or never): anyone on "
              f"{SETTINGS.host} may "
              "connect (`rscf down` + `rscf up` restarts it with its users); see README 'Redis users'",
              file=sys.stderr)
    parts = urlsplit(url)
    conf = {"url": url, "host": parts.hostname, "port": parts.port, "db": int((parts.path or "/0").lstrip("/") or 0),
            "username": unquote(parts.username) if acl and parts.username else None,
            "password": unquote(parts.password) if acl and parts.password else None}
    if args.json:
        print(json.dumps(conf, indent=2))
    else:
        print(url)
    print(f"{user.name} may: {user.describe()}", file=sys.stderr)
    return EXIT_OK


def cmd_s3(args: argparse.Namespace) -> int:
    """A component's or tenant's S3 key. A tenant's is created on first use: the key is generated
    (0600), s3.json re-rendered and the running server told to re-read it (SIGHUP)."""
    from rscf import s3_security
    from rscf.settings import SETTINGS

    try:
        name = s3_security.check_identity(args.name)
    except s3_security.S3AuthError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    access, secret = s3_security.access_key(name), s3_security.secret_key(name)
    if name.startswith(s3_security.TENANT_PREFIX):
        from deploy.local.services import reload_s3_identities

        if not reload_s3_identities():
            print("note: the S3 server does not run here; it learns this key at the next `rscf up`", file=sys.stderr)
    conf = {"endpoint": f"{'https' if SETTINGS.s3.secure else 'http'}://{SETTINGS.s3_endpoint}",
            "access_key": access, "secret_key": secret, "region": SETTINGS.s3.region}
    if args.json:
        print(json.dumps(conf, indent=2))
    else:
        print("\n".join(f"{k}={v}" for k, v in conf.items()))
    print(f"{name} may: " + ", ".join(s3_security.actions_for(name)), file=sys.stderr)
    return EXIT_OK


def cmd_flink(args: argparse.Namespace) -> int:
    """The operator's password for writes through Flink's REST proxy, and the certificate behind it."""
    from deploy.local import flink_rest
    from rscf.settings import SETTINGS

    if not SETTINGS.flink_rest_auth:
        print(f"note: Flink's REST API takes no credential here (RSCF_FLINK_REST_AUTH=0): anyone on {SETTINGS.host} "
              "may submit jobs; see README 'Flink REST API'", file=sys.stderr)
    f = flink_rest.files()
    out = {"url": SETTINGS.flink_url, "username": flink_rest.OPERATOR, "password": flink_rest.operator_password(),
           "internal_url": flink_rest.rest_url(), "cert_file": str(f.cert), "key_file": str(f.key)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(f"{k}={v}" for k, v in out.items()))
        print(f"curl -u {flink_rest.OPERATOR}:\"$PASSWORD\" -X PATCH '{SETTINGS.flink_url}/jobs/<job id>?mode=cancel'"
              "\nreads (GET) need no credential; the internal URL takes the certificate as client and CA",
              file=sys.stderr)
    return EXIT_OK


def cmd_registry(args: argparse.Namespace) -> int:
    """A bearer token for schema registry writes (reads need none), and a confluent-kafka client config."""
    import time

    from rscf import registry_security
    from rscf.settings import SETTINGS

    if not SETTINGS.registry_auth:
        print("note: the registry takes writes without a credential here (RSCF_REGISTRY_AUTH=0)", file=sys.stderr)
    try:
        token = registry_security.mint(args.subject, args.role, args.ttl)
    except registry_security.RegistryAuthError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    client = {"url": SETTINGS.registry_url, "bearer.auth.credentials.source": "STATIC_TOKEN",
              "bearer.auth.token": token, "bearer.auth.logical.cluster": "rscf"}
    out = {"url": SETTINGS.registry_url, "role": args.role, "subject": args.subject, "token": token,
           "expires_at": int(time.time()) + args.ttl, "schema_registry_client": client}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(token)
        print(f"curl -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/vnd.schemaregistry.v1+json' "
              f"-d '{{\"schema\": ...}}' {SETTINGS.registry_url}/subjects/<subject>/versions\n"
              f"{args.role} for {args.ttl} s; reads (GET, serde look-ups) need no token", file=sys.stderr)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("credentials", help="client credentials for the stack's services (Kafka, Prometheus, Redis, S3, Flink REST, registry)")
    verbs = p.add_subparsers(dest="credentials_command", required=True)
    k = verbs.add_parser("kafka", parents=[json_parent()],
                         help="a client config for PRINCIPAL (admin, job, gateway, controller, worker-<pool>, "
                              "tenant-<id>): properties, --json for confluent-kafka, --java for Java clients")
    k.add_argument("principal", help="admin | job | gateway | controller | worker-<pool> | tenant-<id>")
    k.add_argument("--java", action="store_true", help="Java client properties (sasl.jaas.config)")
    k.add_argument("--tls", action="store_true",
                   help="for the TLS listener (SASL_SSL, RSCF_KAFKA_TLS_PORT): verifies the broker against the stack's CA")
    k.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker")
    k.set_defaults(func=cmd_kafka)
    m = verbs.add_parser("prometheus", parents=[json_parent()],
                         help="Prometheus' URL and basic-auth user/password; the Pushgateway's client certificate")
    m.add_argument("--user", default="admin", help="Prometheus user: admin | prometheus (its self-scrape)")
    m.add_argument("--cert", default="admin", help="Pushgateway client certificate: admin | flink | prometheus")
    m.set_defaults(func=cmd_prometheus)
    r = verbs.add_parser("redis", parents=[json_parent()],
                         help="how USER connects to the stack's Redis: a redis:// URL with its password, "
                              "--json for its parts (redis.Redis(**...) without the url)")
    r.add_argument("user", help="admin | job | gateway | controller | operator | health")
    r.set_defaults(func=cmd_redis)
    s = verbs.add_parser("s3", parents=[json_parent()],
                         help="an S3 key for NAME (admin, rscf-worker, rscf-job, rscf-gateway, tenant-<id>): "
                              "endpoint, access key, secret key (--json)")
    s.add_argument("name", help="admin | rscf-worker | rscf-job | rscf-gateway | tenant-<id>")
    s.set_defaults(func=cmd_s3)
    f = verbs.add_parser("flink", parents=[json_parent()],
                         help="the operator's password for Flink REST writes (submit, cancel, stop, savepoint) "
                              "through the proxy, and the mutual-TLS certificate of the JobManager's own endpoint")
    f.set_defaults(func=cmd_flink)
    g = verbs.add_parser("registry", parents=[json_parent()],
                         help="a bearer token for schema registry writes, signed by the stack's key "
                              "(--json: with a confluent-kafka SchemaRegistryClient config)")
    g.add_argument("--role", default="sr-developer", choices=("sr-developer", "sr-admin", "sr-readonly"),
                   help="sr-developer: register versions, subject compatibility; sr-admin: also delete, global rules")
    g.add_argument("--subject", default="operator", help="who the token names (the registry's audit log shows it)")
    g.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (at most 7 days)")
    g.set_defaults(func=cmd_registry)
