"""S3 keys per component and per tenant, and the SeaweedFS ports behind S3, against the stack's real server.

Proves: each component's key reaches only its buckets (and the gateway's only ``tenants/``); a tenant's
key (made by `rscf credentials s3 tenant-<id>`, which the running server learns without a restart)
reads and lists its own artifact prefix and nothing else; the volume and filer HTTP ports refuse
unsigned reads and writes, while the same requests signed with the server's JWT keys are served (so
the refusal is the signature's, not a wrong file id).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rscf import s3_security as s3s
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration
B = SETTINGS.buckets
REPO = SETTINGS.paths.repo
SIZE = 200_000  # random bytes: the filer keeps small objects in its own store, and the volume gzips text


@pytest.fixture(scope="module")
def s3(request):
    """The stack's S3 server (started by the session's stack fixture if it does not answer), and one
    object per tenant prefix written by the admin."""
    from deploy.local.services import SERVICE_BY_NAME
    from rscf.s3 import s3_client

    if not SERVICE_BY_NAME["s3"].health():
        request.getfixturevalue("stack")
    admin = s3_client()
    sfx = uuid.uuid4().hex[:8]
    objs = {t: f"tenants/{t}/artifacts/image/2026-12-02/{sfx}.png" for t in (f"a{sfx}", f"a{sfx}x", f"b{sfx}")}
    bodies = {t: t.encode() + os.urandom(SIZE - len(t)) for t in objs}
    for tenant, key in objs.items():
        admin.put_object(B.artifacts, key, io.BytesIO(bodies[tenant]), SIZE)
    yield admin, objs, bodies
    for key in objs.values():
        admin.remove_object(B.artifacts, key)


def _as(name: str):
    from minio import Minio

    access, secret = s3s.access_key(name), s3s.secret_key(name)
    return Minio(SETTINGS.s3_endpoint, access_key=access, secret_key=secret, secure=False, region=SETTINGS.s3.region)


def _code(call) -> str:
    from minio.error import S3Error

    try:
        result = call()
        if hasattr(result, "read"):
            result.read()
        elif not isinstance(result, (str, bool)) and result is not None and hasattr(result, "__iter__"):
            list(result)
        return "ok"
    except S3Error as exc:
        return exc.code


def test_component_keys_reach_only_their_buckets(s3):
    admin, objs, _ = s3
    key = next(iter(objs.values()))
    body = io.BytesIO(b"x")
    worker, job, gateway = _as(s3s.WORKER), _as(s3s.JOB), _as(s3s.GATEWAY)
    probe = f"tests/s3-security/{uuid.uuid4().hex}"
    # the worker writes artifacts, cannot read them back (another tenant's included) nor touch the backfills
    assert _code(lambda: worker.put_object(B.artifacts, probe, io.BytesIO(b"x"), 1)) == "ok"
    assert _code(lambda: worker.get_object(B.artifacts, key)) == "AccessDenied"
    assert _code(lambda: worker.list_objects(B.artifacts, prefix="tenants/")) == "AccessDenied"
    assert _code(lambda: worker.put_object(B.backfill, probe, io.BytesIO(b"x"), 1)) == "AccessDenied"
    assert _code(lambda: worker.list_objects(B.models, prefix="models/")) == "ok"
    assert _code(lambda: worker.put_object(B.models, probe, io.BytesIO(b"x"), 1)) == "AccessDenied"
    # dead letters' claim checks, the workers' and the job's (rscf.s3.ObjectStorePayloads, as they use it)
    from rscf.s3 import ObjectStorePayloads

    for who in (s3s.WORKER, s3s.JOB):
        assert ObjectStorePayloads(identity=who).put(f"{probe}-{who}", b"dead") == f"s3://{B.audit}/{probe}-{who}"
        assert admin.get_object(B.audit, f"{probe}-{who}").read() == b"dead"
        admin.remove_object(B.audit, f"{probe}-{who}")
    assert _code(lambda: worker.get_object(B.audit, f"{probe}-{s3s.JOB}")) == "AccessDenied"
    # the job: the backfill bucket, no artifact
    assert _code(lambda: job.get_object(B.artifacts, key)) == "AccessDenied"
    assert _code(lambda: job.put_object(B.artifacts, probe, body, 1)) == "AccessDenied"
    assert _code(lambda: job.put_object(B.backfill, probe, io.BytesIO(b"x"), 1)) == "ok"
    assert _code(lambda: job.get_object(B.backfill, probe)) == "ok"
    # the gateway: reads under tenants/ only, writes nothing
    assert _code(lambda: gateway.get_object(B.artifacts, key)) == "ok"
    assert _code(lambda: gateway.get_object(B.artifacts, probe)) == "AccessDenied"
    assert _code(lambda: gateway.put_object(B.artifacts, key, io.BytesIO(b"x"), 1)) == "AccessDenied"
    assert _code(lambda: gateway.get_object(B.backfill, probe)) == "AccessDenied"
    admin.remove_object(B.artifacts, probe)
    admin.remove_object(B.backfill, probe)


def _credentials_cli(name: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "cli.main", "credentials", "s3", name, "--json"], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_tenant_key_reads_and_lists_only_its_own_prefix(s3):
    from minio import Minio

    admin, objs, _ = s3
    own, longer, other = objs  # a<sfx>, a<sfx>x (its name extends the tenant's), b<sfx>
    conf = _credentials_cli(f"tenant-{own}")
    assert conf["access_key"] == f"tenant-{own}" and conf["endpoint"].endswith(SETTINGS.s3_endpoint)
    tenant = Minio(conf["endpoint"].split("://")[1], access_key=conf["access_key"], secret_key=conf["secret_key"],
                   secure=False, region=conf["region"])
    deadline = time.monotonic() + 15  # the server re-reads s3.json on the CLI's SIGHUP
    while _code(lambda: tenant.get_object(B.artifacts, objs[own])) != "ok":
        assert time.monotonic() < deadline, "the tenant's new key was not taken by the running server"
        time.sleep(0.3)
    assert [o.object_name for o in tenant.list_objects(B.artifacts, prefix=f"tenants/{own}/", recursive=True)] \
        == [objs[own]]
    for tenant_id in (longer, other):
        assert _code(lambda: tenant.get_object(B.artifacts, objs[tenant_id])) == "AccessDenied"
        assert _code(lambda: tenant.list_objects(B.artifacts, prefix=f"tenants/{tenant_id}/")) == "AccessDenied"
    assert _code(lambda: tenant.list_objects(B.artifacts, prefix="tenants/")) == "AccessDenied"
    assert _code(lambda: tenant.put_object(B.artifacts, f"tenants/{own}/new", io.BytesIO(b"x"), 1)) == "AccessDenied"
    assert _code(lambda: tenant.list_objects(B.models)) == "AccessDenied"
    # a second call prints the same key (generated once, 0600)
    assert _credentials_cli(f"tenant-{own}")["secret_key"] == conf["secret_key"]
    assert (SETTINGS.paths.data / "secrets" / "s3" / f"tenant-{own}").stat().st_mode & 0o777 == 0o600


GCM_OVERHEAD = 28  # encryption at rest (SETTINGS.s3.encrypt_at_rest): a 12-byte nonce and a 16-byte tag per chunk


def _a_volume_fid(size: int) -> str:
    """The file id of a needle of ``size`` bytes (plus the cipher's overhead when the store encrypts) in the
    artifacts collection (read from the volume index)."""
    size += GCM_OVERHEAD if SETTINGS.s3.encrypt_at_rest else 0
    data = SETTINGS.paths.data / "s3" / "data"
    weed = str(Path(sys.executable).parent / "weed")
    for idx in sorted(data.glob(f"{B.artifacts}_*.idx")):
        vid = idx.stem.rsplit("_", 1)[1]
        out = subprocess.run([weed, "export", f"-dir={data}", f"-volumeId={vid}", f"-collection={B.artifacts}"],
                             capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines()[1:]:
            cols = line.split("\t")
            if len(cols) > 7 and cols[2] == str(size) and cols[7] == "false":
                return cols[0]
    raise AssertionError(f"no needle of {size} bytes in {data}")


def test_volume_and_filer_ports_refuse_unsigned_requests(s3):
    import jwt

    admin, objs, bodies = s3
    tenant, key = next(iter(objs.items()))
    body = bodies[tenant]
    keys = s3s.jwt_keys()
    host, ports = SETTINGS.host, SETTINGS.ports
    fid = _a_volume_fid(SIZE)
    volume = f"http://{host}:{ports.weed_volume}/{fid}"
    assert httpx.get(volume, timeout=10).status_code == 401
    assert httpx.delete(volume, timeout=10).status_code == 401
    assert httpx.post(volume, files={"file": ("x", b"overwrite")}, timeout=10).status_code == 401
    signed = jwt.encode({"fid": fid, "exp": int(time.time()) + 10}, keys["jwt.signing.read"], algorithm="HS256")
    assert httpx.get(volume, headers={"Authorization": f"Bearer {signed}"}, timeout=10).status_code == 200

    filer = f"http://{host}:{ports.weed_filer}/buckets/{B.artifacts}/{key}"
    assert httpx.get(filer, timeout=10).status_code == 401
    assert httpx.get(f"http://{host}:{ports.weed_filer}/buckets/{B.artifacts}/", timeout=10).status_code == 401
    assert httpx.put(f"http://{host}:{ports.weed_filer}/buckets/{B.artifacts}/tests/evil", content=b"x",
                     timeout=10).status_code == 401
    signed = jwt.encode({"exp": int(time.time()) + 10}, keys["jwt.filer_signing.read"], algorithm="HS256")
    resp = httpx.get(filer, headers={"Authorization": f"Bearer {signed}"}, timeout=10)
    assert resp.status_code == 200 and resp.content == body
    # the master hands out locations, never objects: a file id is redirected to the volume port (401 there)
    resp = httpx.get(f"http://{host}:{ports.weed_master}/{fid}", timeout=10)
    assert resp.status_code != 200 or not resp.content.startswith(tenant.encode())
