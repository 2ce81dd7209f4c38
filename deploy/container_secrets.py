"""Credentials for docker-compose and Kubernetes, generated on this machine, never committed (issue #16).

    python -m deploy.container_secrets              # writes <data>/secrets/containers/ (docker-compose.yml reads it)
    python -m deploy.container_secrets k8s | sh     # the same, then `kubectl create secret` for namespace rscf

The values are the local stack's own secret files (``<data>/secrets/kafka/<principal>``, ``redis/<user>``,
``s3/<identity>``, ``s3_secret_key``, ``monitoring/``, ``flink-rest/operator.password``), made by the same code
when absent: a host's ``rscf`` CLI is then the admin of a compose stack too. Derived files are written next to
them: Redis' ACL file (SHA-256), Prometheus' web config and the Flink REST proxy's Caddyfiles (bcrypt), the
JobManager's REST certificate and PKCS12 key store (its own trust store: Java trusts a key entry's certificate),
the HTTP gateway's certificate (from the local stack's CA, so clients verify it with ``<data>/secrets/ca.pem`` as
locally; it also names the Kubernetes Service) and a token signing key of the containers' own; the Kubernetes Flink
REST proxy's certificate (the same CA) and the operator's client certificate for it (deploy/container_tls.py);
every tenant's S3 key (``--tenants``, and each tenant the local stack has a key for) and SeaweedFS' ``s3.json`` of
every identity, both rendered by rscf/s3_security.py's table.

Files are 0644 in a 0700 directory: compose bind-mounts a secret file with its host mode, and each image runs
as a uid of its own (redis 999, kafka 1000, flink 9999, prometheus 65534, rscf 10001); the directory keeps the
host's other users out. Each container gets only the files its service lists. Nothing here prints a value.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from deploy import container_tls
from deploy.container_tls import write_public as _write
from rscf import kafka_security, monitoring_security, redis_security, registry_security, s3_security
from rscf.secrets import load_or_create, random_token
from rscf.settings import SETTINGS

NAMESPACE = "rscf"
PROXY_PORT = 8081  # the Flink REST proxy's port, as the local stack's (Caddy in front of the JobManager)
JOBMANAGER_REST = 8082  # compose: the JobManager's mutual-TLS REST port (RSCF_FLINK_REST_INTERNAL_PORT's default)
K8S_REST_SERVICE = "rscf-content-pipeline-rest"  # the Flink operator's REST Service of the FlinkDeployment
S3_IDENTITIES = (s3_security.ADMIN, s3_security.WORKER, s3_security.JOB, s3_security.GATEWAY)

KAFKA_CONTROLLER_LISTENER = "kafka-controller-listener"  # the broker's own PLAIN user on its controller listener
REDIS_ACL = "redis-users-acl"
PROMETHEUS_WEB = "prometheus-web-config"
REGISTRY_AUTH = "registry-auth"  # the registry's Quarkus OIDC settings with the stack's public key (not secret)
REGISTRY_SIGNING_KEY = "registry-signing-key"  # signs registry write tokens: the init step's only
FLINK_REST_OPERATOR = "flink-rest-operator"  # the proxy's basic-auth password (user `operator`)
FLINK_REST_CERT, FLINK_REST_KEY = "flink-rest-cert", "flink-rest-key"
FLINK_REST_KEYSTORE, FLINK_REST_STORE_PASSWORD = "flink-rest-keystore", "flink-rest-store-password"
CADDYFILE_COMPOSE, CADDYFILE_K8S = "flink-rest-caddyfile", "flink-rest-caddyfile-k8s"
GATEWAY_SERVICE = "rscf-gateway"  # deploy/k8s/gateway.yaml's Service: a name the gateway's certificate holds
GATEWAY_CERT, GATEWAY_KEY, GATEWAY_CA = "gateway-tls-cert", "gateway-tls-key", "gateway-ca"
GATEWAY_SIGNING_KEY = "gateway-signing-key"  # the containers' token signing key, not the local gateway's
# Kubernetes: the Flink REST proxy's TLS (CA-signed server certificate; the operator's certificate, public, to pin)
PROXY_CERT, PROXY_KEY, PROXY_OPERATOR_CERT = "flink-rest-proxy-tls-cert", "flink-rest-proxy-tls-key", \
    "flink-rest-proxy-operator-cert"
K8S_PROXY_DIR = "/etc/rscf-proxy"  # where flink-rest-proxy.yaml mounts Secret rscf-flink-rest-proxy
S3_TENANTS = "s3-tenants"  # {"tenant-<id>": secret key}: the init step makes their S3 users
S3_CONFIG = "s3-config"  # SeaweedFS' s3.json of every identity (components' and tenants'), for a SeaweedFS of yours


def kafka_name(principal: str) -> str:
    return f"kafka-{kafka_security.check_principal(principal)}"


def s3_name(identity: str) -> str:
    """s3-admin, s3-worker, s3-job, s3-gateway (the identity without its rscf- prefix)."""
    s3_security.check_identity(identity)
    return "s3-admin" if identity == s3_security.ADMIN else f"s3-{identity.removeprefix('rscf-')}"


def redis_name(user: str) -> str:
    return f"redis-{redis_security.user(user).name}"


def prometheus_name(user: str) -> str:
    return f"prometheus-{user}"


def out_dir(data: Path | None = None) -> Path:
    return container_tls.secrets_dir(data) / "containers"


# ----------------------------------------------------------------------------- values (the local stack's files)


def passwords(data: Path | None = None) -> dict[str, str]:
    """Secret name -> value, from the local stack's secret files under ``data`` (created there when absent)."""
    secrets = container_tls.secrets_dir(data)

    def local(name: str, base: Path = secrets, nbytes: int = 24) -> str:
        return load_or_create(name, lambda: random_token(nbytes), base).decode().strip()

    values = {kafka_name(p): kafka_security.password(p, data) for p in kafka_security.fixed_principals()}
    values[KAFKA_CONTROLLER_LISTENER] = local("kafka_controller_password")  # deploy/local/kafka_broker.py's
    values |= {redis_name(u.name): redis_security.password(u.name, data, create=True) for u in redis_security.USERS}
    values |= {s3_name(i): s3_security.secret_key(i, data) for i in S3_IDENTITIES}
    values |= {prometheus_name(u): monitoring_security.password(u, data) for u in monitoring_security.PROMETHEUS_USERS}
    values[FLINK_REST_OPERATOR] = local("operator.password", secrets / "flink-rest", 18)  # deploy/local/flink_rest.py's
    values[FLINK_REST_STORE_PASSWORD] = local("containers-flink-rest-store.password", nbytes=18)
    return values


# ----------------------------------------------------------------------------- derived files (pure)


@dataclass(frozen=True)
class ServerTls:
    """Paths, as the proxy's container sees them: its certificate and key, the CA and the one client leaf it takes."""
    cert: str
    key: str
    ca: str
    client: str


def k8s_proxy_tls(base: str = K8S_PROXY_DIR) -> ServerTls:
    return ServerTls(f"{base}/tls.crt", f"{base}/tls.key", f"{base}/ca.crt", f"{base}/operator.crt")


def caddyfile(upstream: str, password_hash: str, client_cert: tuple[str, str] | None = None,
              port: int = PROXY_PORT, server_tls: ServerTls | None = None, bind: str = "") -> str:
    """The Flink REST proxy: reads open, writes and the reads that show secrets ask for the operator's
    password (the local stack's rules, deploy/local/flink_rest.py); ``client_cert`` (cert, key): mutual TLS
    to the JobManager with that certificate, which is also the only one trusted. ``server_tls``: HTTPS only, and
    every connection must present the operator's certificate (the CA's, and that leaf), before any rule applies."""
    from deploy.local.flink_rest import OPERATOR, SENSITIVE_READS

    site, tls = f"http://:{port}", ""
    if server_tls:
        t = server_tls
        site = f"https://:{port}"
        tls = (f"\ttls {t.cert} {t.key} {{\n\t\tclient_auth {{\n\t\t\tmode require_and_verify\n"
               f"\t\t\ttrust_pool file {t.ca}\n\t\t\tverifier leaf {{\n\t\t\t\tfile {t.client}\n"
               f"\t\t\t}}\n\t\t}}\n\t}}\n")
    tls += f"\tbind {bind}\n" if bind else ""
    transport = ""
    if client_cert:
        cert, key = client_cert
        transport = (f"\t\ttransport http {{\n\t\t\ttls_client_auth {cert} {key}\n"
                     f"\t\t\ttls_trust_pool file {cert}\n\t\t}}\n")
    auth = "".join(f"\tbasic_auth @{m} {{\n\t\t{OPERATOR} {password_hash}\n\t}}\n" for m in ("write", "sensitive"))
    return (f"{{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tgrace_period 5s\n}}\n\n"
            f"{site} {{\n{tls}\t@write not method GET HEAD\n\t@sensitive path {' '.join(SENSITIVE_READS)}\n"
            f"{auth}\treverse_proxy {upstream} {{\n{transport}\t}}\n}}\n")


def _kept_hash(path: Path, user: str, password: str) -> str | None:
    """A bcrypt hash for ``user`` in an earlier file that still matches (bcrypt is slow on purpose)."""
    import bcrypt

    try:
        for line in path.read_text().splitlines():
            parts = line.replace(":", " ").split()
            if len(parts) == 2 and parts[0] == user and parts[1].strip("'\"").startswith("$2"):
                digest = parts[1].strip("'\"")
                return digest if bcrypt.checkpw(password.encode(), digest.encode()) else None
    except FileNotFoundError:
        pass
    return None


def _hash(path: Path, user: str, password: str) -> str:
    from deploy.local.monitoring import bcrypt_hash

    return _kept_hash(path, user, password) or bcrypt_hash(password)


def _rest_tls(out: Path, store_password: str) -> None:
    """Self-signed P-256 certificate for the JobManager's REST server and its one client (SAN 127.0.0.1,
    localhost, the operator's REST Service), its key, and a PKCS12 key store of both; kept while it has
    more than 30 days left and the store opens with the password."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_path, key_path, store = out / FLINK_REST_CERT, out / FLINK_REST_KEY, out / FLINK_REST_KEYSTORE
    now = dt.datetime.now(dt.timezone.utc)
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        pkcs12.load_key_and_certificates(store.read_bytes(), store_password.encode())
        if current.not_valid_after_utc - now > dt.timedelta(days=30) and key_path.exists():
            return
    except (FileNotFoundError, ValueError):
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rscf-flink-rest")])
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
            x509.DNSName(K8S_REST_SERVICE), x509.DNSName(f"{K8S_REST_SERVICE}.{NAMESPACE}.svc")]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(store, pkcs12.serialize_key_and_certificates(
        b"rscf-flink-rest", key, cert, None, serialization.BestAvailableEncryption(store_password.encode())))


def gateway_hosts(namespace: str = NAMESPACE) -> tuple[str, ...]:
    """Names the containers' gateway is reached by: loopback (compose publishes 127.0.0.1:8443), the Service."""
    return container_tls.service_hosts(GATEWAY_SERVICE, namespace)


def _gateway_tls(out: Path, data: Path | None) -> None:
    """The gateway's certificate from the local stack's CA, and the CA's certificate (public, for health checks)."""
    container_tls.ca_signed_server(out, data, GATEWAY_CERT, GATEWAY_KEY, GATEWAY_CA, gateway_hosts(), GATEWAY_SERVICE)


def _proxy_tls(out: Path, data: Path | None) -> None:
    """The Kubernetes Flink REST proxy's certificate (same CA, its Service's names) and the operator's client
    certificate it pins (public part only here; the key stays in the local secrets dir)."""
    container_tls.ca_signed_server(out, data, PROXY_CERT, PROXY_KEY, GATEWAY_CA,
                                   container_tls.service_hosts(container_tls.PROXY_SERVICE, NAMESPACE),
                                   container_tls.PROXY_SERVICE)
    _write(out / PROXY_OPERATOR_CERT, container_tls.operator_client(data).cert.read_bytes())


def tenants_of(data: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """``tenant-<id>`` identities: each tenant the local stack has a key for, and ``extra`` tenant ids (their keys
    are made now, in the local secrets dir: `rscf credentials s3 tenant-<id>` then prints the same key)."""
    for tenant in extra:
        s3_security.secret_key(s3_security.tenant_identity(tenant), data)
    return s3_security.known_tenants(data)


def s3_files(values: dict[str, str], tenants: list[str], data: Path | None) -> dict[str, str]:
    """S3_TENANTS (tenant identity -> secret key) and S3_CONFIG (SeaweedFS' s3.json of every identity), both from
    rscf/s3_security.py: the keys its files hold, the actions its table gives."""
    keys = {t: s3_security.secret_key(t, data) for t in tenants}
    ids = {i: (s3_security.access_key(i), values[s3_name(i)]) for i in S3_IDENTITIES}
    ids |= {t: (s3_security.access_key(t), k) for t, k in keys.items()}
    return {S3_TENANTS: json.dumps(keys, indent=2, sort_keys=True) + "\n",
            S3_CONFIG: json.dumps(s3_security.render_identities(ids), indent=2) + "\n"}


# ----------------------------------------------------------------------------- everything


def write_all(out: Path | None = None, data: Path | None = None, tenants: tuple[str, ...] = ()) -> Path:
    """Every secret file compose and the Kubernetes Secrets need, under ``out`` (0700); values from ``data``'s;
    ``tenants``: tenant ids to give an S3 key besides those the local stack has."""
    import yaml

    from deploy.local.flink_rest import OPERATOR
    from deploy.local.monitoring import prometheus_web_config

    out = out or out_dir(data)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    values = passwords(data)
    for name, value in values.items():
        _write(out / name, value.encode())
    hashes = {u.name: redis_security.password_hash(values[redis_name(u.name)]) for u in redis_security.USERS}
    _write(out / REDIS_ACL, redis_security.render_acl(hashes).encode())
    web = out / PROMETHEUS_WEB
    users = {u: _hash(web, u, values[prometheus_name(u)]) for u in monitoring_security.PROMETHEUS_USERS}
    _write(web, yaml.safe_dump(prometheus_web_config(users), sort_keys=True).encode())
    for name, upstream, client, server in (
        (CADDYFILE_COMPOSE, f"https://127.0.0.1:{JOBMANAGER_REST}",
         (f"/run/secrets/{FLINK_REST_CERT}", f"/run/secrets/{FLINK_REST_KEY}"), None),
        (CADDYFILE_K8S, f"http://{K8S_REST_SERVICE}:{PROXY_PORT}", None, k8s_proxy_tls()),
    ):
        digest = _hash(out / name, OPERATOR, values[FLINK_REST_OPERATOR])
        _write(out / name, caddyfile(upstream, digest, client, server_tls=server).encode())
    _rest_tls(out, values[FLINK_REST_STORE_PASSWORD])
    _write(out / REGISTRY_AUTH, registry_security.registry_properties(data).encode())
    _write(out / REGISTRY_SIGNING_KEY, registry_security.ensure_key(data))
    _gateway_tls(out, data)
    _write(out / GATEWAY_SIGNING_KEY, _gateway_signing_key(data))
    _proxy_tls(out, data)
    for name, text in s3_files(values, tenants_of(data, tenants), data).items():
        _write(out / name, text.encode())
    return out


def _gateway_signing_key(data: Path | None = None) -> bytes:
    """The containers' gateways sign access tokens with this key, kept in the local secrets dir (0600) so every
    run hands out the same one; not the local gateway's (``jwt_signing_key.pem``): their tokens stay apart."""
    from gateway.tokens import new_signing_key

    return load_or_create("containers-jwt_signing_key.pem", new_signing_key, container_tls.secrets_dir(data))


def k8s_secrets() -> dict[str, dict[str, str]]:
    """Kubernetes Secret -> {key: file name in the output dir, or "=literal" for a non-secret value}."""
    secrets = {f"rscf-{kafka_name(p)}": {"username": f"={p}", "password": kafka_name(p)}
               for p in kafka_security.fixed_principals()}
    secrets |= {f"rscf-{s3_name(i)}": {"access-key": f"={s3_security.access_key(i)}", "secret-key": s3_name(i)}
                for i in S3_IDENTITIES}
    secrets |= {f"rscf-{redis_name(u.name)}": {"username": f"={u.name}", "password": redis_name(u.name)}
                for u in redis_security.USERS}
    secrets["rscf-redis-acl"] = {"users.acl": REDIS_ACL}  # for your Redis: --aclfile
    secrets["rscf-prometheus-web"] = {"web.yml": PROMETHEUS_WEB}  # for your Prometheus: --web.config.file
    secrets["rscf-flink-rest-proxy"] = {"Caddyfile": CADDYFILE_K8S, "tls.crt": PROXY_CERT, "tls.key": PROXY_KEY,
                                        "ca.crt": GATEWAY_CA, "operator.crt": PROXY_OPERATOR_CERT}
    secrets["rscf-s3-tenants"] = {"tenants.json": S3_TENANTS}  # the Job rscf-s3-tenants only
    secrets["rscf-s3-config"] = {"s3.json": S3_CONFIG}  # for a SeaweedFS of yours: weed s3 -config
    secrets["rscf-registry-auth"] = {"auth.properties": REGISTRY_AUTH}  # your registry: QUARKUS_CONFIG_LOCATIONS
    secrets[f"rscf-{REGISTRY_SIGNING_KEY}"] = {"key.pem": REGISTRY_SIGNING_KEY}  # the init Job only
    secrets["rscf-gateway-tls"] = {"tls.crt": GATEWAY_CERT, "tls.key": GATEWAY_KEY, "ca.crt": GATEWAY_CA}
    secrets[f"rscf-{GATEWAY_SIGNING_KEY}"] = {"key.pem": GATEWAY_SIGNING_KEY}  # the gateway only
    return secrets


def kubectl_commands(out: Path, namespace: str = NAMESPACE) -> list[str]:
    """Idempotent `kubectl` lines (create or update); they name files, never a value."""
    lines = []
    for secret, keys in k8s_secrets().items():
        args = " ".join(f"--from-literal={k}={v[1:]}" if v.startswith("=") else f"--from-file={k}={out / v}"
                        for k, v in keys.items())
        lines.append(f"kubectl -n {namespace} create secret generic {secret} {args} "
                     f"--dry-run=client -o yaml | kubectl apply -f -")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.container_secrets", description=__doc__.split("\n\n")[0])
    p.add_argument("target", nargs="?", choices=("compose", "k8s"), default="compose")
    p.add_argument("--out", type=Path, default=None, help=f"default: {out_dir()}")
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument("--tenants", default="", help="tenant ids (comma-separated) to give an S3 key tenant-<id>, besides "
                   "those the local stack has (`rscf credentials s3 tenant-<id>`)")
    args = p.parse_args(argv)
    try:
        tenants = tuple(t.strip() for t in args.tenants.split(",") if t.strip())
        out = write_all(args.out, tenants=tenants)
    except s3_security.S3AuthError as exc:
        p.error(str(exc))
    print(f"secrets written to {out} (0700; values from {SETTINGS.paths.secrets})", file=sys.stderr)
    if args.target == "k8s":
        print("\n".join(kubectl_commands(out.resolve(), args.namespace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
