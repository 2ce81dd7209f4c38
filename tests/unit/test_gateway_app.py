"""The gateway's HTTP behaviour on an in-process app: auth, tenant from the credential, edge validation,
limits, isolation of results and artifacts. Kafka, registry and S3 are stand-ins here; the real ones
are in tests/integration/test_gateway_service.py."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from gateway.apikeys import KeyStore
from gateway.app import create_app
from gateway.finals import FinalsCache
from gateway.runtime import Runtime
from gateway.tokens import TokenService
from operators.templates import InMemoryTemplateStore
from schemas.serde import LocalRegistry, TopicSerde


class FakeSender:
    def __init__(self):
        self.sent = []

    async def send(self, topic, key, value):
        self.sent.append((topic, key, value))
        return 0, len(self.sent) - 1

    def close(self):
        pass


@pytest.fixture()
def gw(tmp_path):
    registry = LocalRegistry()
    rt = Runtime(keys=KeyStore(tmp_path), tokens=TokenService(tmp_path), cache=FinalsCache(100), reader=None,
                 sender=FakeSender(),
                 prompt_serde=TopicSerde("p", schema_name="prompt_request", client=registry),
                 control_serde=TopicSerde("c", schema_name="control_event", client=registry),
                 templates=InMemoryTemplateStore({"t1": "Summarise: {{topic}}"}),
                 presign=lambda b, k, ttl: f"http://s3.example/{b}/{k}?X-Amz-Expires={int(ttl.total_seconds())}",
                 prompts_topic="p", control_topic="c", artifacts_bucket="rscf-artifacts", rate_per_s=5, burst=50,
                 max_body_bytes=4096, presign_ttl_s=300)
    client = TestClient(create_app(rt))
    _, key_a = rt.keys.create("acme")
    _, key_b = rt.keys.create("beta")
    _, key_op = rt.keys.create("ops", role="operator")
    return rt, client, key_a, key_b, key_op


def _h(key):
    return {"Authorization": f"Bearer {key}"}


def _final(tenant, request_id, uris=()):
    now = datetime.now(timezone.utc)
    return {"request_id": request_id, "tenant_id": tenant, "modality": "IMAGE", "status": "SUCCEEDED", "reason": None,
            "output_text": None, "artifact_uris": list(uris), "attempts": 1, "created_at": now, "completed_at": now}


def test_submit_sets_tenant_from_credential_and_produces_avro(gw):
    rt, client, key_a, *_ = gw
    r = client.post("/v1/prompts", json={"prompt": "a haiku", "modality": "text", "request_id": "r-1"}, headers=_h(key_a))
    assert r.status_code == 202, r.text
    assert r.json()["tenant_id"] == "acme" and r.json()["request_id"] == "r-1"
    topic, key, value = rt.sender.sent[-1]
    assert (topic, key) == ("p", b"acme")
    assert rt.prompt_serde.decode(value)["tenant_id"] == "acme"
    # no request id: the gateway makes one
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "TEXT"}, headers=_h(key_a))
    assert r.status_code == 202 and len(r.json()["request_id"]) == 36


@pytest.mark.parametrize("headers,code", [
    ({}, "missing_credentials"),
    ({"Authorization": "Basic abc"}, "malformed_credentials"),
    ({"Authorization": "Bearer rscf_0123456789abcdef.wrong"}, "invalid_api_key"),
    ({"Authorization": "Bearer not-a-jwt"}, "malformed_token"),
])
def test_bad_credentials_are_401_with_a_code(gw, headers, code):
    _, client, *_ = gw
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "text"}, headers=headers)
    assert r.status_code == 401 and r.json()["error"] == code
    assert "WWW-Authenticate" in r.headers


def test_forged_tenant_unknown_fields_bad_json_oversize_and_job_validation(gw):
    rt, client, key_a, *_ = gw
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "text", "tenant_id": "beta"}, headers=_h(key_a))
    assert r.status_code == 403 and r.json()["error"] == "tenant_mismatch"
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "text", "tenant": "beta"}, headers=_h(key_a))
    assert r.status_code == 422 and r.json()["error"] == "unknown_field"
    r = client.post("/v1/prompts", content=b'{"prompt": "x", ', headers={**_h(key_a), "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_json"
    r = client.post("/v1/prompts", json={"prompt": "x" * 5000, "modality": "text"}, headers=_h(key_a))
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    # the job's own validate step: an image size off the multiple of 8, an empty prompt after sanitising
    r = client.post("/v1/prompts", json={"prompt": "cat", "modality": "image", "params": {"width": 100}}, headers=_h(key_a))
    assert r.status_code == 422 and r.json()["error"] == "param_not_multiple_of_8"
    r = client.post("/v1/prompts", json={"prompt": "\u200b\u0000 ", "modality": "text"}, headers=_h(key_a))
    assert r.status_code == 422 and r.json()["error"] == "empty_prompt"
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "text", "template_id": "nope"}, headers=_h(key_a))
    assert r.status_code == 422 and r.json()["error"] == "unknown_template"
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "text", "request_id": "../etc"}, headers=_h(key_a))
    assert r.status_code == 422
    assert rt.sender.sent == []
    # no credential: 401 comes first, whatever is wrong with the body
    r = client.post("/v1/prompts", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 401


def test_flood_from_one_key_is_429_with_retry_after_and_other_tenants_unaffected(gw):
    rt, _, key_a, key_b, _ = gw
    rt.burst = 5
    client = TestClient(create_app(rt))
    codes = [client.get("/v1/results/x", headers=_h(key_a)).status_code for _ in range(8)]
    assert codes[:5] == [404] * 5 and codes[5:] == [429] * 3
    r = client.get("/v1/results/x", headers=_h(key_a))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert client.get("/v1/results/x", headers=_h(key_b)).status_code == 404


def test_results_and_artifacts_only_for_the_callers_tenant(gw):
    rt, client, key_a, key_b, _ = gw
    a_uri = "s3://rscf-artifacts/tenants/acme/artifacts/image/2026-12-02/same-1.png"
    rt.cache.add(_final("acme", "same", [a_uri]))
    rt.cache.add(_final("beta", "only-b", ["s3://rscf-artifacts/tenants/beta/artifacts/image/d/only-b-1.png"]))
    r = client.get("/v1/results/same", headers=_h(key_a))
    assert r.status_code == 200 and r.json()["tenant_id"] == "acme"
    assert client.get("/v1/results/same", headers=_h(key_b)).status_code == 404  # same id, other tenant
    assert client.get("/v1/results/only-b", headers=_h(key_a)).status_code == 404
    assert client.get("/v1/results/only-b/artifacts/0", headers=_h(key_a)).status_code == 404
    r = client.get("/v1/results/same/artifacts/0", headers=_h(key_a))
    assert r.status_code == 200 and "tenants/acme/" in r.json()["url"] and r.json()["expires_in"] == 300
    assert client.get("/v1/results/same/artifacts/1", headers=_h(key_a)).status_code == 404


def test_a_final_whose_artifact_is_outside_the_tenant_prefix_is_not_presigned(gw):
    rt, client, key_a, *_ = gw
    rt.cache.add(_final("acme", "sneaky", ["s3://rscf-artifacts/tenants/beta/artifacts/x.png",
                                           "s3://rscf-artifacts/tenants/acme/../beta/x.png",
                                           "s3://rscf-audit/tenants/acme/x.png"]))
    for i in range(3):
        assert client.get(f"/v1/results/sneaky/artifacts/{i}", headers=_h(key_a)).status_code == 404


@pytest.mark.parametrize("rid", ["..", "../beta", "a" * 129, "%2Fetc%2Fpasswd", "x%00y", ".hidden", "a..b"])
def test_path_tricks_in_ids_are_refused(gw, rid):
    _, client, key_a, *_ = gw
    r = client.get(f"/v1/results/{rid}", headers=_h(key_a))
    assert r.status_code in (400, 404), r.text
    if r.status_code == 400:
        assert r.json()["error"] == "invalid_request_id"


def test_oauth_client_credentials_tokens_and_their_failures(gw):
    rt, client, key_a, *_ = gw
    key_id, secret = key_a.removeprefix("rscf_").split(".", 1)
    form = {"grant_type": "client_credentials", "client_id": key_id, "client_secret": secret}
    r = client.post("/v1/oauth/token", data=form)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert r.json()["token_type"] == "Bearer" and r.json()["expires_in"] == rt.tokens.ttl_s
    ok = client.post("/v1/prompts", json={"prompt": "x", "modality": "text"}, headers=_h(token))
    assert ok.status_code == 202 and ok.json()["tenant_id"] == "acme"
    assert client.post("/v1/oauth/token", data={**form, "client_secret": "nope"}).json()["error"] == "invalid_client"
    assert client.post("/v1/oauth/token", data={**form, "grant_type": "password"}).status_code == 400
    # wrong audience, expired, other signer
    other = TokenService(rt.keys.path.parent / "other")
    forged, _ = other.issue(key_id, "acme", "tenant")
    assert client.get("/v1/results/x", headers=_h(forged)).json()["error"] == "invalid_token"
    wrong_aud = TokenService(rt.keys.path.parent, audience="someone-else").issue(key_id, "acme", "tenant")[0]
    assert client.get("/v1/results/x", headers=_h(wrong_aud)).json()["error"] == "wrong_audience"
    expired = rt.tokens.issue(key_id, "acme", "tenant", now=time.time() - 3600)[0]
    assert client.get("/v1/results/x", headers=_h(expired)).json()["error"] == "expired_token"
    # a revoked key's API key and its tokens stop working at once
    rt.keys.revoke(key_id)
    assert client.get("/v1/results/x", headers=_h(key_a)).json()["error"] == "invalid_api_key"
    assert client.get("/v1/results/x", headers=_h(token)).json()["error"] == "revoked_key"


def test_jwks_and_openapi_are_served(gw):
    rt, client, *_ = gw
    jwks = client.get("/.well-known/jwks.json").json()
    assert jwks["keys"][0]["kid"] == rt.tokens.kid and jwks["keys"][0]["alg"] == "ES256" and "d" not in jwks["keys"][0]
    spec = client.get("/openapi.json").json()
    assert {"/v1/prompts", "/v1/results/{request_id}", "/v1/stream", "/v1/oauth/token"} <= set(spec["paths"])


def test_control_events_need_the_operator_role(gw):
    rt, client, key_a, _, key_op = gw
    event = {"breaker": {"pool": "text-small", "action": "FORCE_OPEN"}}
    r = client.post("/v1/control", json=event, headers=_h(key_a))
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = client.post("/v1/control", json=event, headers=_h(key_op))
    assert r.status_code == 202, r.text
    topic, _, value = rt.sender.sent[-1]
    assert topic == "c" and rt.control_serde.decode(value)["breaker"]["action"] == "FORCE_OPEN"


def test_long_poll_returns_the_final_when_it_lands(gw):
    rt, client, key_a, *_ = gw
    import threading

    threading.Timer(0.3, lambda: rt.cache.add(_final("beta", "late", ()))).start()
    threading.Timer(0.5, lambda: rt.cache.add(_final("acme", "late", ()))).start()
    t0 = time.monotonic()
    r = client.get("/v1/results/late?wait=5", headers=_h(key_a))
    assert r.status_code == 200 and r.json()["tenant_id"] == "acme" and time.monotonic() - t0 < 4


def test_submit_hot_path_limits_a_streamed_body_and_rate_limits_before_reading_it(gw):
    rt, client, key_a, key_b, _ = gw

    def chunks():  # no Content-Length: the limit applies to what is streamed
        for _ in range(10):
            yield b"x" * 1000

    r = client.post("/v1/prompts", content=chunks(), headers={**_h(key_a), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    rt.burst = 2
    client = TestClient(create_app(rt))
    codes = [client.post("/v1/prompts", content=b"{not json", headers=_h(key_b)).status_code for _ in range(4)]
    assert codes[:2] == [400, 400] and codes[2:] == [429, 429]  # a flood of bad bodies is limited too
    assert rt.sender.sent == []


def test_submit_answers_503_when_the_registry_or_the_broker_refuses(gw):
    rt, client, key_a, *_ = gw

    class Down:
        def encode(self, record):
            raise ConnectionError("registry down")

    class Refusing:
        async def send(self, topic, key, value):
            raise RuntimeError("broker down")

    good = rt.prompt_serde
    rt.prompt_serde = Down()
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "text"}, headers=_h(key_a))
    assert r.status_code == 503 and r.json()["error"] == "registry_unavailable"
    rt.prompt_serde, rt.sender = good, Refusing()
    r = client.post("/v1/prompts", json={"prompt": "x", "modality": "text"}, headers=_h(key_a))
    assert r.status_code == 503 and r.json()["error"] == "kafka_unavailable"
    assert "broker" not in r.text
