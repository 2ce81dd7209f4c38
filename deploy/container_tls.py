"""Certificates of the containers' stack signed by the local stack's CA (issue #16), for deploy/container_secrets.py.

- ``ca_signed_server``: a server certificate and key from the CA (gateway/tls.py's ``server_certificate``), for the
  HTTP gateway and the Kubernetes Flink REST proxy; clients verify both with ``<data>/secrets/ca.pem``.
- ``operator_client``: the operator's client certificate for that proxy (deploy/local/monitoring.py's
  ``issue_certificate``, client use only), kept in the local secrets dir (0600): it is the operator's, no pod's.

The CA's key never leaves this machine; a container gets certificates, not the means to make them.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from rscf.monitoring_security import ClientCert
from rscf.secrets import write_private
from rscf.settings import SETTINGS

RENEW_DAYS = 30
PROXY_SERVICE = "rscf-flink-rest-proxy"  # deploy/k8s/flink-rest-proxy.yaml's Service
OPERATOR_CLIENT = "flink-rest-operator"  # its certificate's common name: rscf-flink-rest-operator


def secrets_dir(data: Path | None = None) -> Path:
    """The local stack's secrets directory under ``data`` (default: the stack's data dir)."""
    return (data or SETTINGS.paths.data) / "secrets"


def service_hosts(service: str, namespace: str) -> tuple[str, ...]:
    """Loopback (compose's published ports, `kubectl port-forward`) and every name of a Kubernetes Service."""
    return ("127.0.0.1", "localhost", service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local")


def write_public(path: Path, data: bytes) -> None:
    """Atomically, then 0644 (the directory is 0700): readable by the container's own uid."""
    if path.exists() and path.read_bytes() == data:
        return
    write_private(path, data)
    os.chmod(path, 0o644)


def ca_signed_server(out: Path, data: Path | None, cert_name: str, key_name: str, ca_name: str,
                     hosts: tuple[str, ...], common_name: str) -> None:
    """``out/cert_name`` and ``out/key_name`` signed by the local stack's CA (made there when absent), and the
    CA's certificate as ``out/ca_name``; kept while the CA signed it, its names are ``hosts``, its key matches
    and it has more than 30 days left."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    from gateway.tls import ensure_ca, server_certificate

    ca_cert, ca_key = ensure_ca(secrets_dir(data))
    write_public(out / ca_name, ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path, key_path = out / cert_name, out / key_name
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        current.verify_directly_issued_by(ca_cert)
        names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        left = current.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
        cn = current.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if ([str(n.value) for n in names] == list(hosts) and left > dt.timedelta(days=RENEW_DAYS)
                and [a.value for a in cn] == [common_name]
                and key.public_key() == current.public_key()):
            return
    except (FileNotFoundError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        pass
    cert, key = server_certificate(ca_cert, ca_key, hosts, common_name)
    write_public(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def operator_files(data: Path | None = None) -> ClientCert:
    base = secrets_dir(data)
    return ClientCert(OPERATOR_CLIENT, base / "containers-flink-rest-operator.pem",
                      base / "containers-flink-rest-operator.key")


def operator_client(data: Path | None = None) -> ClientCert:
    """The operator's client certificate for the Kubernetes Flink REST proxy (0600, renewed 30 days before it
    expires); the proxy trusts the CA and pins this leaf, so the CA's other client certificates do not pass."""
    from deploy.local.monitoring import issue_certificate
    from gateway.tls import ensure_ca

    ca_cert, ca_key = ensure_ca(secrets_dir(data))
    files = operator_files(data)
    issue_certificate(OPERATOR_CLIENT, False, ca_cert, ca_key, files)
    return files
