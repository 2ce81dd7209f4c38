"""Redis-backed pieces of the content pipeline against the stack's Redis 8: vector set, templates."""

import uuid

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_client(stack):
    from rscf import redis_security

    return redis_security.client(redis_security.ADMIN)  # test keys (test:...): the admin


@pytest.fixture
def prefix(redis_client):
    p = f"test:operators:{uuid.uuid4().hex[:8]}:"
    yield p
    for key in redis_client.scan_iter(match=p + "*"):
        redis_client.delete(key)


def test_vector_set_index_round_trip(redis_client, prefix):
    from operators.vector_index import RedisVectorSetIndex

    index = RedisVectorSetIndex(redis_client, key=prefix + "kb", quantization="NOQUANT")
    vectors = np.array([[1, 0, 0, 0], [0.7, 0.7, 0, 0], [-1, 0, 0, 0]], dtype=np.float32)
    index.add(["a", "b", "c"], vectors, [{"text": "alpha", "title": "A"}, {"text": "béta"}, {"text": "gamma"}])
    assert index.count() == 3
    hits = index.search(np.array([1, 0, 0, 0], dtype=np.float32), 2)
    assert [h[0] for h in hits] == ["a", "b"]
    assert hits[0][1] == pytest.approx(1.0, abs=1e-3) and hits[1][1] == pytest.approx(0.7071, abs=1e-2)
    assert hits[0][2] == {"text": "alpha", "title": "A"} and hits[1][2] == {"text": "béta"}
    index.add(["a"], np.array([[0, 0, 0, 1]], dtype=np.float32), [{"text": "moved"}])
    assert index.count() == 3
    assert index.search(np.array([0, 0, 0, 1], dtype=np.float32), 1)[0][2] == {"text": "moved"}


def test_ingest_and_enrich_with_redis(redis_client, prefix):
    from operators.embedding import Embedder
    from operators.enrich import enrich, ingest_knowledge_base
    from operators.vector_index import RedisVectorSetIndex

    index = RedisVectorSetIndex(redis_client, key=prefix + "kb")
    embedder = Embedder.shared()
    assert ingest_knowledge_base("operators/data/knowledge_base.jsonl", embedder, index) == 30
    out = enrich({"modality": "TEXT", "prompt": "How do I descale the kettle?", "metadata": {}},
                 {"rag"}, embedder, index, token_budget=120)
    assert out["metadata"]["rag_passages"].split(",")[0] == "kb-008"


def test_templates_in_redis(redis_client, prefix):
    from operators.templates import RedisTemplateStore
    from operators.validate import validate_prompt

    store = RedisTemplateStore(redis_client, key=prefix + "templates", cache_ttl_s=0)
    store.put("greet", "Say hello to {{name}}. {{prompt}}")
    record = {"request_id": "r", "tenant_id": "t", "modality": "TEXT", "prompt": "Be brief.",
              "template_id": "greet", "template_vars": {"name": "Ada"}, "params": {}}
    assert validate_prompt(record, store).record["prompt"] == "Say hello to Ada. Be brief."
    assert validate_prompt({**record, "template_id": "nope"}, store).reason == "unknown_template"
