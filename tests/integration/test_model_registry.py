"""Model registry on the real object store: publish, list, resolve, fetch with checksums, load a handler."""

from __future__ import annotations

import time
import uuid

import pytest

from inference_workers.handlers import TextHandler
from inference_workers.models.catalog import load_handler
from inference_workers.models.registry import ModelRegistry, RegistryError
from tests.helpers.tiny_models import build_tiny_text_model

pytestmark = pytest.mark.integration


@pytest.fixture()
def registry(stack, tmp_path):
    reg = ModelRegistry(cache_dir=tmp_path / "cache")
    name = f"it-tiny-{uuid.uuid4().hex[:8]}"
    yield reg, name
    for version in reg.versions(name):
        reg.delete(name, version)


def test_publish_list_resolve_fetch_and_repair(registry, tmp_path):
    reg, name = registry
    src = build_tiny_text_model(tmp_path / "src")
    m1 = reg.publish(src, name, "1", "TextHandler", params={"default_max_tokens": 4}, metrics={"note": "it"})
    assert set(m1.files) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert reg.publish(src, name, "1", "TextHandler") == m1  # identical re-publish is a no-op
    (src / "extra.txt").write_text("changed")
    with pytest.raises(RegistryError, match="different content"):
        reg.publish(src, name, "1", "TextHandler")
    time.sleep(0.01)
    m2 = reg.publish(src, name, "2", "TextHandler", params={"default_max_tokens": 4})

    listed = [(m.name, m.version) for m in reg.list_models() if m.name == name]
    assert listed == [(name, "1"), (name, "2")]
    assert reg.versions(name) == ["1", "2"]
    assert reg.resolve(name, "latest") == "2" and reg.resolve(name, "1") == "1"
    with pytest.raises(RegistryError):
        reg.resolve(name, "9")

    path = reg.fetch(name, "2")
    assert reg.verify(path, m2) == [] and (path / "extra.txt").read_text() == "changed"
    # corrupt one cached file and delete another: the next fetch repairs both
    weights = path / "model.safetensors"
    weights.write_bytes(b"garbage")
    (path / "tokenizer.json").unlink()
    assert sorted(reg.verify(path, m2)) == ["model.safetensors", "tokenizer.json"]
    assert reg.fetch(name, "latest") == path
    assert reg.verify(path, m2) == []


def test_load_handler_from_registry_serves_requests(registry, tmp_path):
    reg, name = registry
    reg.publish(build_tiny_text_model(tmp_path / "src"), name, "3", "TextHandler",
                params={"default_max_tokens": 5})
    handler = load_handler(name, None, reg, device="cpu")
    assert isinstance(handler, TextHandler)
    assert (handler.model_name, handler.model_version, handler.default_max_tokens) == (name, "3", 5)
    out = handler.run_inference([{"request_id": "a", "prompt": "hi", "params": {"temperature": 0.0}}],
                                handler.load_model())
    assert out[0].tokens_out == 5
    with pytest.raises(RegistryError):
        load_handler(f"{name}-missing", "latest", reg)
