"""The schema registry's writes take a credential (issue #16 item 3b, README "Schema registry"): reads stay
anonymous so any client with the registry's Avro serde decodes, writes need a token signed by the stack's
key with a role that allows them. Real Apicurio, as `rscf up` starts it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx
import jwt
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from rscf import registry_security
from rscf.settings import SETTINGS
from tests.helpers.stack_services import services_up

pytestmark = pytest.mark.skipif(not SETTINGS.registry_auth, reason="RSCF_REGISTRY_AUTH=0")
SCHEMA = json.dumps({"type": "record", "name": "AuthProbe", "namespace": "rscf.test",
                     "fields": [{"name": "a", "type": "string"}]})
EVOLVED = json.dumps({"type": "record", "name": "AuthProbe", "namespace": "rscf.test",
                      "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0}]})
CT = {"content-type": "application/vnd.schemaregistry.v1+json"}


@pytest.fixture(scope="module")
def url():
    services_up(["registry", "registry-proxy"], "the schema registry and its proxy")
    return SETTINGS.registry_url


def _subject() -> str:
    return f"rscf.test.auth.{uuid.uuid4().hex[:8]}-value"


def _bearer(token: str) -> dict[str, str]:
    return {**CT, "Authorization": f"Bearer {token}"}


def _register(url: str, subject: str, headers: dict[str, str], schema: str = SCHEMA) -> httpx.Response:
    return httpx.post(f"{url}/subjects/{subject}/versions", content=json.dumps({"schema": schema}),
                      headers=headers, timeout=10)


def _forged(claims: dict, key: bytes | None = None) -> str:
    """A token like the stack's own but with ``claims`` changed, or signed by another key."""
    now = int(time.time())
    base = {"iss": registry_security.ISSUER, "aud": registry_security.AUDIENCE, "sub": "probe",
            "groups": [registry_security.DEVELOPER], "iat": now, "exp": now + 300}
    return jwt.encode({**base, **claims}, key or registry_security.ensure_key(), algorithm="RS256")


def test_anonymous_writes_are_refused_and_reads_are_open(url):
    subject = _subject()
    # through the proxy an anonymous registration is a look-up: 404, nothing written; Apicurio itself: 401
    assert _register(url, subject, CT).status_code == 404
    assert _register(SETTINGS.registry_internal_url, subject, CT).status_code == 401
    assert subject not in httpx.get(f"{url}/subjects", timeout=10).json()
    assert httpx.put(f"{url}/config", json={"compatibility": "NONE"}, timeout=10).status_code == 401
    assert httpx.put(f"{url}/config/{subject}", json={"compatibility": "NONE"}, timeout=10).status_code == 401
    # reads: the subjects the stack registered, their schemas by id, a serde's look-up (a POST that reads)
    subjects = httpx.get(f"{url}/subjects", timeout=10).json()
    prompts = f"{SETTINGS.topics.prompts}-value"
    assert prompts in subjects
    latest = httpx.get(f"{url}/subjects/{prompts}/versions/latest", timeout=10).json()
    assert httpx.get(f"{url}/schemas/ids/{latest['id']}", timeout=10).status_code == 200
    looked_up = httpx.post(f"{url}/subjects/{prompts}", content=json.dumps({"schema": latest["schema"]}),
                           headers=CT, timeout=10)
    assert looked_up.status_code == 200 and looked_up.json()["id"] == latest["id"]


def test_a_developer_token_registers_and_evolves_a_readonly_one_is_forbidden(url):
    subject = _subject()
    assert _register(url, subject, _bearer(registry_security.mint("probe", registry_security.READONLY))).status_code == 403
    dev = _bearer(registry_security.mint("probe", registry_security.DEVELOPER))
    first = _register(url, subject, dev)
    assert first.status_code == 200, first.text
    assert httpx.put(f"{url}/config/{subject}", json={"compatibility": "BACKWARD"}, headers=dev, timeout=10).status_code == 200
    assert _register(url, subject, dev, EVOLVED).status_code == 200
    versions = httpx.get(f"{url}/subjects/{subject}/versions", timeout=10).json()
    assert len(versions) == 2
    admin = _bearer(registry_security.mint("probe", registry_security.ADMIN))
    assert httpx.delete(f"{url}/subjects/{subject}", timeout=10).status_code == 401
    assert httpx.delete(f"{url}/subjects/{subject}", headers=admin, timeout=10).status_code == 200


@pytest.mark.parametrize("claims,other_key", [
    ({"aud": "rscf-gateway"}, False),  # another audience: e.g. a token meant for something else
    ({"iss": "someone-else"}, False),
    ({"exp": int(time.time()) - 60}, False),
    ({}, True),  # right claims, another key: what a forger can sign
    ({"groups": []}, False),  # valid, but no role: authenticated yet not allowed to write
])
def test_forged_or_wrong_tokens_cannot_write(url, claims, other_key):
    key = None
    if other_key:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    r = _register(url, _subject(), _bearer(_forged(claims, key)))
    assert r.status_code in (401, 403), r.text
    assert r.status_code == (403 if claims == {"groups": []} else 401)


def test_a_plain_confluent_client_reads_anonymously_and_writes_with_the_cli_token(url):
    """What an outside user does: confluent-kafka's SchemaRegistryClient, no credential to read, the token
    `rscf credentials registry --json` prints to write."""
    subject = _subject()
    anonymous = SchemaRegistryClient({"url": url, "timeout": 10})
    prompts = anonymous.get_latest_version(f"{SETTINGS.topics.prompts}-value")
    assert anonymous.get_schema(prompts.schema_id).schema_str
    with pytest.raises(SchemaRegistryError) as refused:
        anonymous.register_schema(subject, Schema(SCHEMA, "AVRO"))
    assert refused.value.http_status_code == 404  # the proxy's look-up: no such subject, nothing registered
    out = subprocess.run([sys.executable, "-m", "cli.main", "credentials", "registry", "--json", "--ttl", "120"],
                         cwd=SETTINGS.paths.repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout)
    assert issued["expires_at"] > time.time() + 60
    writer = SchemaRegistryClient({k: v for k, v in issued["schema_registry_client"].items()})
    assert writer.register_schema(subject, Schema(SCHEMA, "AVRO")) > 0
    bad = subprocess.run([sys.executable, "-m", "cli.main", "credentials", "registry", "--ttl", "0"],
                         cwd=SETTINGS.paths.repo, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "ttl" in bad.stderr


def test_rscf_serdes_register_new_subjects_transparently(url):
    """A TopicSerde on a new topic registers its subject with the process' own token (no setup by the caller)."""
    from schemas.prompt_input import prompt_request
    from schemas.serde import TopicSerde

    topic = f"rscf.test.auth.{uuid.uuid4().hex[:8]}"
    serde = TopicSerde(topic, url, schema_name="prompt_request")
    value = serde.encode(prompt_request({"tenant_id": "acme", "prompt": "hi", "modality": "text"}))
    assert serde.decode(value)["tenant_id"] == "acme"
    assert f"{topic}-value" in httpx.get(f"{url}/subjects", timeout=10).json()


def test_a_producer_without_a_token_looks_up_a_registered_subject_and_cannot_add_one(url, monkeypatch):
    """A container that holds no registry key (docker-compose, Kubernetes: only the set-up step has it)
    still produces on subjects the set-up registered, and cannot register a new one."""
    from schemas import serde as serde_module
    from schemas.prompt_input import prompt_request
    from schemas.serde import TopicSerde

    topic = f"rscf.test.auth.{uuid.uuid4().hex[:8]}"
    TopicSerde(topic, url, schema_name="prompt_request").writer_id  # the set-up step, with its token
    monkeypatch.setenv("RSCF_REGISTRY_KEY_FILE", "/nonexistent/registry_signing_key.pem")
    monkeypatch.setattr(serde_module, "_CLIENTS", {})  # a fresh process: clients built without the key
    keyless = TopicSerde(topic, url, schema_name="prompt_request")
    value = keyless.encode(prompt_request({"tenant_id": "acme", "prompt": "hi", "modality": "text"}))
    assert keyless.decode(value)["prompt"] == "hi"
    with pytest.raises(SchemaRegistryError) as refused:
        TopicSerde(f"rscf.test.auth.{uuid.uuid4().hex[:8]}", url, schema_name="prompt_request").writer_id
    assert refused.value.http_status_code == 404  # looked up, not registered: the subject does not exist


def test_a_default_confluent_serializer_still_produces_on_a_registered_subject(url):
    """auto.register.schemas is on by default: the proxy answers an anonymous re-registration of a registered
    schema with its id (a look-up), and an anonymous registration of a new schema is refused."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from schemas.prompt_input import prompt_request
    from schemas.serde import schema_str

    client = SchemaRegistryClient({"url": url, "timeout": 10})  # no credential, default serializer settings
    serializer = AvroSerializer(client, schema_str("prompt_request"))
    record = prompt_request({"tenant_id": "acme", "prompt": "hi", "modality": "text"})
    value = serializer(record, SerializationContext(SETTINGS.topics.prompts, MessageField.VALUE))
    registered = httpx.get(f"{url}/subjects/{SETTINGS.topics.prompts}-value/versions/latest", timeout=10).json()
    assert int.from_bytes(value[1:5], "big") == registered["id"]
    with pytest.raises(SchemaRegistryError) as refused:
        AvroSerializer(client, SCHEMA)({"a": "x"}, SerializationContext(_subject()[:-6], MessageField.VALUE))
    assert refused.value.http_status_code == 404  # not registered, and not registrable anonymously
    # Apicurio's own port, around the proxy: anonymous writes are refused there too
    internal = SETTINGS.registry_internal_url
    assert _register(internal, _subject(), CT).status_code == 401
    assert _register(internal, f"{SETTINGS.topics.prompts}-value", CT, schema_str("prompt_request")).status_code == 401
