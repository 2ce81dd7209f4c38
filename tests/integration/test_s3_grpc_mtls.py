"""SeaweedFS' gRPC ports take only the stack's weed certificate (issue #16 item 3b, README "Object storage
keys"): `weed mini` as `rscf up` runs it, real gRPC calls. Before, any local process could call the master,
volume and filer gRPC APIs (assign file ids, read volume status, list and change filer metadata) without
any credential."""

from __future__ import annotations

import grpc
import pytest

from rscf.monitoring_security import ca_file, client_cert
from rscf.settings import SETTINGS
from tests.helpers.stack_services import services_up

pytestmark = pytest.mark.skipif(not SETTINGS.s3.grpc_mtls, reason="RSCF_S3_GRPC_MTLS=0")
GRPC_OFFSET = 10_000  # SeaweedFS: gRPC port = HTTP port + 10000
CALLS = {  # one harmless read per server: (HTTP port, method with an empty request message)
    "master": (SETTINGS.ports.weed_master, "/master_pb.Seaweed/GetMasterConfiguration"),
    "volume": (SETTINGS.ports.weed_volume, "/volume_server_pb.VolumeServer/VolumeServerStatus"),
    "filer": (SETTINGS.ports.weed_filer, "/filer_pb.SeaweedFiler/GetFilerConfiguration"),
}


@pytest.fixture(scope="module")
def weed():
    services_up(["s3"], "object storage")
    base = SETTINGS.paths.secrets / "weed-grpc"
    return base / "weed.pem", base / "weed.key"


def _call(port: int, method: str, cert=None, key=None, plain: bool = False) -> grpc.StatusCode | bytes:
    if plain:
        channel = grpc.insecure_channel(f"{SETTINGS.host}:{port + GRPC_OFFSET}")
    else:
        creds = grpc.ssl_channel_credentials(ca_file().read_bytes(), key.read_bytes() if key else None,
                                             cert.read_bytes() if cert else None)
        channel = grpc.secure_channel(f"{SETTINGS.host}:{port + GRPC_OFFSET}", creds)
    try:
        return channel.unary_unary(method)(b"", timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()


@pytest.mark.parametrize("server", sorted(CALLS))
def test_grpc_answers_the_weed_certificate_only(weed, server):
    port, method = CALLS[server]
    cert, key = weed
    assert isinstance(_call(port, method, cert, key), bytes), "the stack's own certificate is served"
    assert _call(port, method, plain=True) == grpc.StatusCode.UNAVAILABLE  # plaintext: no handshake
    assert _call(port, method) == grpc.StatusCode.UNAVAILABLE  # TLS without a client certificate
    other = client_cert("admin")  # signed by the same stack CA, but not named rscf-weed
    assert other.cert.exists(), "the monitoring's admin certificate (made by rscf up)"
    assert _call(port, method, other.cert, other.key) == grpc.StatusCode.UNAVAILABLE


def test_s3_still_works_through_the_locked_grpc(weed):
    """The S3 gateway talks to the filer over gRPC inside `weed mini`: a put and get still go through."""
    import io
    import uuid

    from rscf.s3 import s3_client

    client = s3_client()
    key = f"tests/grpc-mtls/{uuid.uuid4().hex}"
    client.put_object(SETTINGS.buckets.audit, key, io.BytesIO(b"locked"), 6)
    try:
        assert client.get_object(SETTINGS.buckets.audit, key).read() == b"locked"
    finally:
        client.remove_object(SETTINGS.buckets.audit, key)
