"""SeaweedFS's `weed mini` command line: the stack's object store (`rscf up`, deploy/local/services.py) and the
private ones a benchmark or a test starts on ports of its own (`rscf bench s3-encryption`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.local import installed
from rscf.s3_security import GrpcTls
from rscf.settings import SETTINGS


@dataclass(frozen=True)
class WeedPorts:
    s3: int
    master: int
    volume: int
    filer: int

    def all_bound(self) -> tuple[int, ...]:
        """Every port `weed mini` binds: its four, their gRPC ports (+10000), metrics (master + 1000) and
        the admin server it opens even with its UI off (master + 2000)."""
        base = (self.s3, self.master, self.volume, self.filer)
        return (*base, *(p + 10_000 for p in base), self.master + 1000, self.master + 2000)


def stack_ports() -> WeedPorts:
    P = SETTINGS.ports
    return WeedPorts(P.s3, P.weed_master, P.weed_volume, P.weed_filer)


def weed_mini_argv(data_dir: Path, ports: WeedPorts, config: Path | None, encrypt: bool) -> list[str]:
    """`config`: the S3 identities file (None: anonymous access, for private benchmark instances only).
    `encrypt`: every chunk written to the volume files is AES-256-GCM encrypted (SETTINGS.s3.encrypt_at_rest)."""
    H = SETTINGS.host
    return [
        installed.venv_bin("weed"),
        "mini",
        f"-dir={data_dir}",
        f"-ip={H}",
        f"-ip.bind={H}",
        f"-s3.port={ports.s3}",
        *([f"-s3.config={config}"] if config is not None else []),
        f"-master.port={ports.master}",
        f"-volume.port={ports.volume}",
        f"-filer.port={ports.filer}",
        "-admin.ui=false",
        "-webdav=false",
        f"-metricsIp={H}",
        f"-metricsPort={ports.master + 1000}",
        # weed mini also opens an admin server (even with its UI off) and Iceberg/Lance catalogs on fixed
        # default ports (23646 and +10000, 8181, 9101): a second stack on shifted ports would collide.
        f"-admin.port={ports.master + 2000}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256",
        *(["-filer.encryptVolumeData", "-s3.encryptVolumeData"] if encrypt else []),
    ]


def weed_grpc_tls() -> GrpcTls | None:
    """The gRPC certificate of `weed mini` (CN rscf-weed, server and client use, from the stack's CA), or None
    with RSCF_S3_GRPC_MTLS=0."""
    from deploy.local.monitoring import issue_certificate
    from gateway.tls import ensure_ca
    from rscf.monitoring_security import ClientCert, ca_file
    from rscf.s3_security import GRPC_COMMON_NAME
    from rscf.secrets import secrets_dir

    if not SETTINGS.s3.grpc_mtls:
        return None
    ca_cert, ca_key = ensure_ca()
    base = secrets_dir(SETTINGS.paths.secrets / "weed-grpc")
    leaf = ClientCert(GRPC_COMMON_NAME, base / "weed.pem", base / "weed.key")
    issue_certificate(GRPC_COMMON_NAME.removeprefix("rscf-"), True, ca_cert, ca_key, leaf, client_too=True)
    return GrpcTls(ca_file(), leaf.cert, leaf.key)
