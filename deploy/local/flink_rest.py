"""Flink's REST API behind a lock (issue #16: job submission is code execution).

- The JobManager serves REST on 127.0.0.1:`flink_rest_internal` with mutual TLS
  (`security.ssl.rest.authentication-enabled`): it answers only a client that presents the one
  certificate in its trust store, a self-signed one made here (not the stack's CA, which signs
  every component's certificate). `flink run` and RSCF's own code present it.
- Caddy serves the usual port, `flink_rest` (8081), in front: GET and HEAD (the Web UI, job
  status, metrics, checkpoints) pass without a credential, as before; every other method (submit a
  job, upload a jar, cancel, stop, savepoint, rescale) asks for the operator's password (basic
  auth: `rscf credentials flink`), then goes on with the certificate.

Why a proxy: Flink's REST server knows certificates, not passwords, and a browser on the Web UI
has no client certificate. Why Caddy: a proven server with basic auth, method matchers and client
certificates towards its upstream, built once from the Go module proxy (install.sh). The files
live under `<data>/secrets/flink-rest/` (0600); RSCF_FLINK_REST_AUTH=0 turns all of it off.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rscf.secrets import load_or_create, random_token, secrets_dir, write_private
from rscf.settings import SETTINGS

OPERATOR = "operator"  # the basic-auth user of the proxy (role operator: the control plane)
CERT_DAYS, RENEW_DAYS = 365, 30
H, P = SETTINGS.host, SETTINGS.ports


@dataclass(frozen=True)
class RestTls:
    cert: Path  # PEM, self-signed: the JobManager's server certificate and every client's
    key: Path
    keystore: Path  # PKCS12 of cert + key (Flink's server and `flink run`)
    truststore: Path  # PKCS12 with this certificate only
    store_password: Path
    operator_password: Path
    caddyfile: Path


def files() -> RestTls:
    d = SETTINGS.paths.secrets / "flink-rest"
    return RestTls(d / "rest.pem", d / "rest.key", d / "rest-keystore.p12", d / "rest-truststore.p12",
                   d / "stores.password", d / "operator.password", d / "Caddyfile")


def _secret(path: Path) -> str:
    return load_or_create(path.name, lambda: random_token(18), path.parent).decode().strip()


def operator_password() -> str:
    return _secret(files().operator_password)


# ----------------------------------------------------------------------------- certificate and stores


def ensure_tls() -> RestTls:
    """The certificate (renewed 30 days before it expires) and Flink's key and trust stores for it."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    f = files()
    secrets_dir(f.cert.parent)
    cert = _current_cert(f) or _new_cert(f)
    pw = _secret(f.store_password)
    key = _load_key(f.key)
    if not f.keystore.exists() or _stored_cert(f.keystore, pw) != cert:
        write_private(f.keystore, pkcs12.serialize_key_and_certificates(
            b"rscf-flink-rest", key, cert, None, _encryption(pw)))
    marker = f.truststore.with_suffix(".pem")
    pem = f.cert.read_bytes()
    if not (f.truststore.exists() and marker.exists() and marker.read_bytes() == pem):
        _trust_store(f.truststore, f.cert, pw)
        marker.write_bytes(pem)
    return f


def _encryption(pw: str):
    from cryptography.hazmat.primitives import serialization

    return serialization.BestAvailableEncryption(pw.encode())


def _load_key(path: Path):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(path.read_bytes(), None)


def _current_cert(f: RestTls):
    from cryptography import x509

    if not (f.cert.exists() and f.key.exists()):
        return None
    cert = x509.load_pem_x509_certificate(f.cert.read_bytes())
    if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < dt.timedelta(days=RENEW_DAYS):
        return None
    return cert


def _new_cert(f: RestTls):
    """Self-signed, for 127.0.0.1 and localhost, usable as server and as client (Flink's REST SSL uses
    one key store for both ends)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rscf-flink-rest")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(H)),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(f.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    write_private(f.cert, cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _stored_cert(keystore: Path, pw: str):
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        return pkcs12.load_key_and_certificates(keystore.read_bytes(), pw.encode())[1]
    except ValueError:
        return None


def _trust_store(path: Path, cert: Path, pw: str) -> None:
    """keytool writes the trusted-certificate entry Java expects (Python's pkcs12 cannot mark one)."""
    keytool = shutil.which("keytool")
    if keytool is None:
        raise RuntimeError("keytool not found (it comes with the JDK that runs Flink)")
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    subprocess.run([keytool, "-importcert", "-alias", "rscf-flink-rest", "-file", str(cert), "-keystore",
                    str(tmp), "-storetype", "PKCS12", "-storepass", pw, "-noprompt"],
                   check=True, capture_output=True, timeout=60)
    tmp.chmod(0o600)
    tmp.replace(path)


REST_CIPHER_SUITES = ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")


def ssl_config() -> dict:
    """Flink's REST SSL keys (the cluster's config.yaml; `flink run` reads the same file)."""
    if not SETTINGS.flink_rest_auth:
        return {}
    f = ensure_tls()
    pw = _secret(f.store_password)
    return {
        "security.ssl.rest.enabled": True,
        "security.ssl.rest.authentication-enabled": True,
        "security.ssl.rest.keystore": str(f.keystore),
        "security.ssl.rest.keystore-password": pw,
        "security.ssl.rest.key-password": pw,
        "security.ssl.rest.truststore": str(f.truststore),
        "security.ssl.rest.truststore-password": pw,
        # Flink's default suite is TLS_RSA_WITH_AES_128_CBC_SHA: "no cipher suites in common" with this EC key
        "security.ssl.algorithms": ",".join(REST_CIPHER_SUITES),
    }


def jobmanager_rest_port() -> int:
    return P.flink_rest_internal if SETTINGS.flink_rest_auth else P.flink_rest


# ----------------------------------------------------------------------------- the proxy


# Reads that show secrets stay the operator's too: the cluster's and a job's configuration (job arguments
# carry the job's Kafka and Redis passwords), JVM options (key store passwords), logs, stdout, dumps.
SENSITIVE_READS = (
    "/jobmanager/config", "/jobmanager/environment", "/jobmanager/log*", "/jobmanager/stdout",
    "/jobmanager/thread-dump", "/jobmanager/profiler*", "/taskmanagers/*/log", "/taskmanagers/*/logs",
    "/taskmanagers/*/logs/*", "/taskmanagers/*/stdout", "/taskmanagers/*/thread-dump", "/taskmanagers/*/profiler",
    "/taskmanagers/*/profiler/*", "/jobs/*/jobmanager/*", "/jobs/*/config",
)  # Caddy: a `*` inside a path stops at `/`; only a trailing one runs to the end


def caddyfile(listen: int, upstream: int, user: str, password_hash: str, cert: Path, key: Path) -> str:
    """Reads open, writes and SENSITIVE_READS with the operator's password; upstream: the JobManager,
    with the certificate."""
    return f"""{{
	admin off
	persist_config off
	auto_https off
	grace_period 5s
}}

http://{H}:{listen} {{
	bind {H}
	@write not method GET HEAD
	@sensitive path {" ".join(SENSITIVE_READS)}
	basic_auth @write {{
		{user} {password_hash}
	}}
	basic_auth @sensitive {{
		{user} {password_hash}
	}}
	reverse_proxy https://{H}:{upstream} {{
		transport http {{
			tls_client_auth {cert} {key}
			tls_trust_pool file {cert}
		}}
	}}
}}
"""


def prepare_proxy() -> None:
    """The Caddyfile (0600), its bcrypt hash rendered again only when the password changed."""
    import bcrypt

    f = ensure_tls()
    pw = operator_password().encode()
    old = _hash_in(f.caddyfile)
    digest = old if old and bcrypt.checkpw(pw, old.encode()) else bcrypt.hashpw(pw, bcrypt.gensalt(10)).decode()
    write_private(f.caddyfile, caddyfile(P.flink_rest, P.flink_rest_internal, OPERATOR, digest, f.cert,
                                         f.key).encode())


def _hash_in(caddyfile_path: Path) -> str | None:
    try:
        for line in caddyfile_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == OPERATOR and parts[1].startswith("$2"):
                return parts[1]
    except FileNotFoundError:
        pass
    return None


def proxy_argv() -> list[str]:
    from deploy.local import installed

    return [installed.caddy_binary(), "run", "--config", str(files().caddyfile), "--adapter", "caddyfile"]


def proxy_healthy() -> bool:
    """Caddy answers on the public port: 401 to an anonymous write (it does not ask Flink for that)."""
    import httpx

    try:
        return httpx.post(f"{SETTINGS.flink_url}/jobs", timeout=2).status_code == 401
    except httpx.HTTPError:
        return False


def proxy_env() -> dict[str, str]:
    """Caddy keeps nothing outside the data dir (it would write under ~/.local/share and ~/.config)."""
    home = SETTINGS.paths.data / "caddy"
    return {"XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}


# ----------------------------------------------------------------------------- RSCF's own client


def rest_url() -> str:
    """Where RSCF's own code reaches the JobManager: its mutual-TLS endpoint, else the plain one."""
    return f"https://{H}:{P.flink_rest_internal}" if SETTINGS.flink_rest_auth else SETTINGS.flink_url


_CONTEXTS: dict[tuple[str, float], object] = {}


def ssl_context():
    """Trusts the JobManager's certificate only and presents it (cached while the file is the same)."""
    import ssl

    f = files()
    stamp = (str(f.cert), f.cert.stat().st_mtime)
    if stamp not in _CONTEXTS:
        ctx = ssl.create_default_context(cafile=str(f.cert))
        ctx.load_cert_chain(str(f.cert), str(f.key))
        _CONTEXTS.clear()
        _CONTEXTS[stamp] = ctx
    return _CONTEXTS[stamp]


def request(method: str, path: str, timeout: float = 10.0, **kw):
    """One call to the JobManager's REST API as the operator (raises httpx.HTTPError when unreachable)."""
    import httpx

    if SETTINGS.flink_rest_auth and not files().cert.exists():
        raise httpx.ConnectError(f"no Flink REST certificate at {files().cert} (`rscf up` makes it)")
    verify = ssl_context() if SETTINGS.flink_rest_auth else True
    return httpx.request(method, f"{rest_url()}{path}", timeout=timeout, verify=verify, **kw)


def get(path: str, timeout: float = 10.0, **kw):
    return request("GET", path, timeout=timeout, **kw)
