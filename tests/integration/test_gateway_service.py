"""The gateway as a real process over TLS against the real Kafka, registry and S3 (issue #16).

A gateway of this test's own (private port, private topics, private secrets dir) is started the
way `rscf up` starts it (`python -m gateway.server`); finals are produced to its finals topic
as the job would, with real artifacts in S3 under each tenant's prefix. Proves: TLS verified
against the local CA; prompts reach Kafka as Avro keyed by the credential's tenant; tenant A
cannot read tenant B's results or artifacts by any endpoint, id or path trick; presigned URLs
expire and cannot be re-pointed; tokens, revocation, the flood limit; no secret in the log;
a bounded schemathesis fuzz of the OpenAPI finds no server error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from rscf.kafka_clients import client_security, credentials_env
from rscf.s3_security import GATEWAY, secret_key
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration
REPO = SETTINGS.paths.repo


@pytest.fixture(scope="module")
def services(request):
    """Kafka, registry and S3 answering; started by the session's stack fixture only if they do not."""
    from deploy.local.services import SERVICE_BY_NAME

    if not all(SERVICE_BY_NAME[n].health() for n in ("kafka", "registry", "s3")):
        request.getfixturevalue("stack")
    return SETTINGS


class Gw:
    def __init__(self, data: Path, port: int, sfx: str) -> None:
        self.data, self.port = data, port
        self.url = f"https://{SETTINGS.host}:{port}"
        self.prompts, self.content, self.control = (f"gwtest.{sfx}.{t}" for t in ("prompts", "content", "control"))
        self.ca = data / "secrets" / "ca.pem"
        self.log = data / "gateway.log"
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, verify=str(self.ca), headers=headers, timeout=20, **kw)


@pytest.fixture(scope="module")
def gw(services, tmp_path_factory):
    from gateway.apikeys import KeyStore
    from rscf.kafka_clients import create_topics
    from schemas.serde import TopicSerde
    from tools.harness import free_port

    g = Gw(tmp_path_factory.mktemp("gw"), free_port(), uuid.uuid4().hex[:8])
    create_topics([g.prompts, g.content, g.control], partitions=2)
    for topic, schema in ((g.prompts, "prompt_request"), (g.content, "content_result"), (g.control, "control_event")):
        TopicSerde(topic, schema_name=schema).writer_id  # registered, as `rscf up` does for the real topics
    store = KeyStore(g.data / "secrets")
    for name, tenant, role in (("acme", "acme", "tenant"), ("beta", "beta", "tenant"), ("flood", "acme", "tenant"),
                               ("ops", "ops", "operator"), ("revoked", "acme", "tenant")):
        g.keys[name] = store.create(tenant, role)[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RSCF_DATA_DIR": str(g.data), "RSCF_GATEWAY_PORT": str(g.port),
           "RSCF_GATEWAY_RATE_PER_S": "20", "RSCF_GATEWAY_BURST": "40", "RSCF_GATEWAY_PRESIGN_TTL_S": "3",
           # the gateway's own S3 key (reads under tenants/ only), handed over as a container's Secret would be
           "RSCF_S3_ACCESS_KEY": GATEWAY, "RSCF_S3_SECRET_KEY": secret_key(GATEWAY), **credentials_env()}
    with open(g.log, "wb") as log:
        g.proc = subprocess.Popen([sys.executable, "-m", "gateway.server", "--port", str(g.port), "--prompts-topic",
                                   g.prompts, "--content-topic", g.content, "--control-topic", g.control],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        assert g.proc.poll() is None, g.log.read_text()[-3000:]
        try:
            if g.ca.exists() and g.client().get("/healthz").json()["finals_reader"]:
                break
        except (httpx.HTTPError, ValueError):
            pass
        assert time.monotonic() < deadline, g.log.read_text()[-3000:]
        time.sleep(0.3)
    yield g
    g.proc.terminate()
    try:
        g.proc.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(g.proc.pid, __import__("signal").SIGUSR1)  # thread dump into the log, then stop it
        time.sleep(1)
        g.proc.kill()
        pytest.fail("gateway did not stop on SIGTERM:\n" + g.log.read_text()[-6000:])
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security()}).delete_topics([g.prompts, g.content, g.control])


def _final(tenant: str, request_id: str, uris: list[str]) -> dict:
    now = datetime.now(timezone.utc)
    return {"request_id": request_id, "tenant_id": tenant, "modality": "IMAGE", "status": "SUCCEEDED",
            "reason": None, "output_text": None, "artifact_uris": uris, "model_name": "m", "model_version": "1",
            "pool": "image", "attempts": 1, "verdicts": [], "degraded": [],
            "latency": {"total_ms": 1, "pipeline_ms": 1, "queue_ms": 0, "inference_ms": 0}, "cost_units": 1.0,
            "created_at": now, "completed_at": now}


def _produce_finals(gw: Gw, finals: list[dict]) -> None:
    from confluent_kafka import Producer

    from schemas.keys import identity_key
    from schemas.serde import TopicSerde

    serde = TopicSerde(gw.content, schema_name="content_result")
    producer = Producer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security()})
    for f in finals:
        producer.produce(gw.content, key=identity_key(f["tenant_id"], f["request_id"]).encode(), value=serde.encode(f))
    assert producer.flush(10) == 0


def test_tls_is_verified_against_the_local_ca(gw):
    assert gw.client().get("/healthz").status_code == 200
    with pytest.raises(httpx.ConnectError):  # the system trust store does not know the stack's CA
        httpx.get(f"{gw.url}/healthz", timeout=5)
    with pytest.raises(httpx.HTTPError):  # no plaintext HTTP on the port
        httpx.get(f"http://{SETTINGS.host}:{gw.port}/healthz", timeout=5)
    assert oct(os.stat(gw.data / "secrets" / "gateway.key").st_mode & 0o777) == "0o600"
    assert oct(os.stat(gw.data / "secrets" / "ca.key").st_mode & 0o777) == "0o600"


def test_prompts_reach_kafka_as_avro_keyed_by_the_credentials_tenant(gw):
    from confluent_kafka import Consumer

    from schemas.serde import TopicSerde

    with gw.client(gw.keys["acme"]) as c:
        ok = c.post("/v1/prompts", json={"prompt": "a haiku", "modality": "text", "request_id": "p-1"})
        forged = c.post("/v1/prompts", json={"prompt": "x", "modality": "text", "request_id": "p-2", "tenant_id": "beta"})
    assert ok.status_code == 202 and ok.json()["tenant_id"] == "acme"
    assert forged.status_code == 403 and forged.json()["error"] == "tenant_mismatch"
    consumer = Consumer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe([gw.prompts])
    serde = TopicSerde(gw.prompts, schema_name="prompt_request")
    seen, deadline = {}, time.monotonic() + 20
    while "p-1" not in seen and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.5):
            if not msg.error():
                rec = serde.decode(msg.value())
                seen[rec["request_id"]] = (msg.key(), rec["tenant_id"])
    consumer.close()
    assert seen.get("p-1") == (b"acme", "acme") and "p-2" not in seen


def test_tenant_a_cannot_read_tenant_bs_results_or_artifacts(gw):
    from rscf.s3 import s3_client

    s3 = s3_client()
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    a_key = f"tenants/acme/artifacts/image/{day}/same-1.png"
    b_key = f"tenants/beta/artifacts/image/{day}/same-1.png"
    import io

    for key, data in ((a_key, b"acme-bytes"), (b_key, b"beta-bytes")):
        s3.put_object(SETTINGS.buckets.artifacts, key, io.BytesIO(data), len(data))
    art = f"s3://{SETTINGS.buckets.artifacts}/"
    _produce_finals(gw, [_final("beta", "same", [art + b_key]), _final("beta", "b-only", [art + b_key]),
                         _final("acme", "same", [art + a_key]), _final("acme", "forged", [art + b_key])])
    a, b = gw.client(gw.keys["acme"]), gw.client(gw.keys["beta"])
    assert a.get("/v1/results/same?wait=15").json()["tenant_id"] == "acme"
    assert b.get("/v1/results/same?wait=15").json()["tenant_id"] == "beta"
    # another tenant's request id: the same answer as an unknown one, by every endpoint
    assert a.get("/v1/results/b-only").status_code == 404
    assert a.get("/v1/results/b-only/artifacts/0").status_code == 404
    # a final of A's that names B's object (a forged or buggy record) is not presigned
    assert a.get("/v1/results/forged?wait=10").status_code == 200
    assert a.get("/v1/results/forged/artifacts/0").status_code == 404
    for trick in ("../beta/same", "..", "%2e%2e%2fbeta", "%2Fetc%2Fpasswd", "same%00", "x" * 300, "same/../b-only"):
        r = a.get(f"/v1/results/{trick}")
        assert r.status_code in (400, 404) and "beta" not in r.text, (trick, r.text)
    # A's own artifact: a presigned URL that works, for that object only, until it expires
    signed = a.get("/v1/results/same/artifacts/0").json()
    assert httpx.get(signed["url"], timeout=10).content == b"acme-bytes"
    assert httpx.get(signed["url"].replace("/tenants/acme/", "/tenants/beta/"), timeout=10).status_code == 403
    unsigned = f"http://{SETTINGS.s3_endpoint}/{SETTINGS.buckets.artifacts}/{b_key}"
    assert httpx.get(unsigned, timeout=10).status_code == 403  # no anonymous reads of the bucket
    time.sleep(signed["expires_in"] + 1.5)
    assert httpx.get(signed["url"], timeout=10).status_code == 403
    for key in (a_key, b_key):
        s3.remove_object(SETTINGS.buckets.artifacts, key)


def test_stream_carries_only_the_callers_finals(gw):
    events: list[dict] = []
    opened = threading.Event()

    def listen() -> None:
        with gw.client(gw.keys["acme"]) as c, c.stream("GET", "/v1/stream") as r:
            opened.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["request_id"] == "s-end":
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert opened.wait(10)
    time.sleep(0.5)
    _produce_finals(gw, [_final("beta", "s-1", []), _final("acme", "s-2", []), _final("beta", "s-3", []),
                         _final("acme", "s-end", [])])
    t.join(20)
    assert [e["request_id"] for e in events] == ["s-2", "s-end"] and {e["tenant_id"] for e in events} == {"acme"}


def test_tokens_jwks_and_revocation(gw):
    import jwt

    key = gw.keys["revoked"]
    key_id, secret = key.removeprefix("rscf_").split(".", 1)
    with gw.client() as c:
        tok = c.post("/v1/oauth/token", data={"grant_type": "client_credentials", "client_id": key_id,
                                              "client_secret": secret}).json()["access_token"]
        jwks = c.get("/.well-known/jwks.json").json()
    signing = jwt.PyJWKSet.from_dict(jwks).keys[0].key
    claims = jwt.decode(tok, signing, algorithms=["ES256"], audience=SETTINGS.gateway.audience,
                        issuer=SETTINGS.gateway.issuer)
    assert claims["tenant"] == "acme" and claims["sub"] == key_id
    with gw.client(tok) as c:
        assert c.post("/v1/prompts", json={"prompt": "hi", "modality": "text"}).status_code == 202
        assert c.post("/v1/control", json={"breaker": {"pool": "echo", "action": "FORCE_OPEN"}}).status_code == 403
    with gw.client(gw.keys["ops"]) as c:
        assert c.post("/v1/control", json={"breaker": {"pool": "echo", "action": "FORCE_OPEN"}}).status_code == 202
    env = {**os.environ, "RSCF_DATA_DIR": str(gw.data), "PYTHONPATH": str(REPO), **credentials_env()}
    out = subprocess.run([sys.executable, "-m", "cli.main", "tenants", "keys", "revoke", key_id, "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["revoked_at"]
    listed = subprocess.run([sys.executable, "-m", "cli.main", "tenants", "keys", "list", "--json"], cwd=REPO,
                            env=env, capture_output=True, text=True, check=True).stdout
    assert secret not in listed and "hash" not in listed
    with gw.client(key) as c:
        assert c.get("/v1/results/x").json()["error"] == "invalid_api_key"
    with gw.client(tok) as c:
        assert c.get("/v1/results/x").json()["error"] == "revoked_key"


def test_a_flood_from_one_key_gets_429_and_other_tenants_are_unaffected(gw):
    with gw.client(gw.keys["flood"]) as flood, gw.client(gw.keys["beta"]) as other:
        answers = [flood.get("/v1/results/nothing") for _ in range(80)]
        assert other.get("/v1/results/nothing").status_code == 404
    codes = [a.status_code for a in answers]
    assert 429 in codes and codes.count(404) >= 40 and set(codes) == {404, 429}
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1


def test_bounded_fuzz_of_the_openapi_finds_no_server_error(gw):
    """schemathesis: examples, coverage and fuzzing phases, 10 examples per operation, one worker."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{gw.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "10", "--tls-verify", str(gw.ca), "-H", f"Authorization: Bearer {gw.keys['beta']}",
         "--generation-deterministic", "--workers", "1", "--phases", "examples,coverage,fuzzing",
         "--request-timeout", "10",
         # the SSE stream never ends and long polls wait up to 30 s: their ids and tricks are tested above
         "--exclude-path", "/v1/stream", "--exclude-path", "/v1/results/{request_id}"],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    (gw.data / "fuzz.txt").write_text(out.stdout)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "6 selected" in out.stdout and "generated" in out.stdout, out.stdout[-4000:]


def test_no_secret_in_the_gateway_log(gw):
    from gateway.tokens import KEY_FILE

    log = gw.log.read_text(errors="replace")
    assert "POST /v1/prompts" in log  # the access log is there, and says what was asked
    secrets = [k.split(".", 1)[1] for k in gw.keys.values()] + [SETTINGS.s3.secret_key, secret_key(GATEWAY)]
    pem = (gw.data / "secrets" / KEY_FILE).read_text().splitlines()[1]
    for secret in secrets + [pem]:
        assert secret not in log
    assert "Bearer ey" not in log and "rscf_" not in log


def test_rscf_up_runs_the_gateway_under_supervisord(services):
    """`rscf up` (here: --only gateway, in a private data dir so the shared stack's supervisord is not
    touched) generates the CA and keys, starts the gateway under supervisord, `rscf status` shows it, a
    SIGKILLed gateway comes back by itself, `rscf down` stops it."""
    import signal
    import tempfile

    from tools.harness import free_port

    data = Path(tempfile.mkdtemp(prefix="gwup-", dir="/tmp"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RSCF_DATA_DIR": str(data), "RSCF_GATEWAY_PORT": str(port),
           "RSCF_S3_SECRET_KEY": SETTINGS.s3.secret_key, **credentials_env()}

    def rscf(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=180)

    def gateway_state() -> dict:
        return next(s for s in json.loads(rscf("status", "--json").stdout)["services"] if s["name"] == "gateway")

    try:
        up = rscf("up", "--only", "gateway", "--json")
        assert up.returncode == 0, up.stderr[-3000:]
        deadline = time.monotonic() + 30
        while (first := gateway_state())["state"] == "STARTING" and time.monotonic() < deadline:
            time.sleep(0.5)  # healthy, and supervisord counts it as started after startsecs
        assert first["healthy"] and first["state"] == "RUNNING" and str(port) in first["url"]
        for name in ("ca.key", "gateway.key", "jwt_signing_key.pem"):
            assert oct(os.stat(data / "secrets" / name).st_mode & 0o777) == "0o600"
        os.kill(first["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            again = gateway_state()
            if again["healthy"] and again["pid"] != first["pid"]:
                break
            assert time.monotonic() < deadline, again
            time.sleep(1)
        assert again["restarts"] >= 1
    finally:
        down = rscf("down", "--json")
        assert down.returncode == 0 and "gateway" in json.loads(down.stdout)["stopped"], down.stderr
