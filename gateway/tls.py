"""The stack's local certificate authority and the gateway's server certificate (cryptography).

Created by the install step (`python -m gateway.tls`) or the first `rscf up`, under the secrets
dir: ``ca.pem`` (public, what clients verify against), ``ca.key`` and ``gateway.key`` (0600).
The server certificate names 127.0.0.1 and localhost and is renewed when it has under 30
days left. P-256 keys: a handshake costs ~1 ms of CPU, not RSA-2048's ~2.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rscf.settings import SETTINGS
from rscf.secrets import secrets_dir, write_private


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ensure_ca(base: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = base / "ca.pem", base / "ca.key"
    if cert_path.exists() and key_path.exists():
        return (x509.load_pem_x509_certificate(cert_path.read_bytes()),
                serialization.load_pem_private_key(key_path.read_bytes(), None))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RSCF local CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)
    return cert, key


def ensure_ca(base: Path | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The stack's local CA (created on first use): other services' certificates are signed by it too."""
    return _ensure_ca(secrets_dir(base or SETTINGS.paths.secrets))


def ensure_tls(base: Path | None = None, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """The CA and a current gateway certificate, created or renewed as needed."""
    base = secrets_dir(base or SETTINGS.paths.secrets)
    ca_cert, ca_key = _ensure_ca(base)
    files = TlsFiles(base / "ca.pem", base / "gateway.pem", base / "gateway.key")
    now = dt.datetime.now(dt.timezone.utc)
    if files.cert.exists() and files.key.exists():
        current = x509.load_pem_x509_certificate(files.cert.read_bytes())
        if current.issuer == ca_cert.subject and current.not_valid_after_utc - now > dt.timedelta(days=30):
            return files
    cert, key = server_certificate(ca_cert, ca_key, hosts)
    write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def server_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: tuple[str, ...],
                       common_name: str = "rscf-gateway") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new gateway certificate for ``hosts`` (IPs and DNS names), one year, and its key; written by the
    caller (here; deploy/container_secrets.py for the containers' gateway, with their Service names)."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


if __name__ == "__main__":  # install step: `python -m gateway.tls`
    made = ensure_tls()
    print(f"local CA: {made.ca_cert}", file=sys.stderr)
