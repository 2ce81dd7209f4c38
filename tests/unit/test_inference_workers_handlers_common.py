"""Device helper, echo handler, registry logic that needs no object store."""

from __future__ import annotations


import pytest

from inference_workers.handlers import HANDLER_CLASSES, EchoHandler, RequestRejected
from inference_workers.handlers.device import (
    MemoryGuard, forget_models, plan_device, shared_model, split_to_fit, stable_seed,
)
from inference_workers.models.catalog import handler_from_dir, pool_model
from inference_workers.models.registry import Manifest, local_files, sha256_file, version_sort_key


def test_cpu_plan_and_guard():
    plan = plan_device("cpu", max_batch=5)
    assert plan.describe() == {"device": "cpu", "dtype": "float32", "max_batch": 5}
    assert MemoryGuard(plan).fits(10**15)  # CPU: no device memory to guard


class SmallGuard:
    def fits(self, estimate):
        return estimate <= 3


def test_split_to_fit_keeps_order_and_halves_until_fit():
    chunks = split_to_fit(list(range(10)), 8, estimate=len, guard=SmallGuard())
    assert [x for c in chunks for x in c] == list(range(10))
    assert all(len(c) <= 3 for c in chunks)
    assert split_to_fit([1, 2, 3], 2) == [[1, 2], [3]]
    # a single item that never fits still comes back (the handler reports it)
    assert split_to_fit([1], 4, estimate=lambda c: 99, guard=SmallGuard()) == [[1]]


def test_shared_model_loads_once_per_key():
    forget_models()
    calls = []
    a = shared_model("k", lambda: calls.append(1) or object())
    b = shared_model("k", lambda: calls.append(1) or object())
    assert a is b and len(calls) == 1
    forget_models()


def test_stable_seed():
    assert stable_seed({"request_id": "r", "params": {"seed": 42}}) == 42
    assert stable_seed({"request_id": "r", "params": {"seed": None}}) == stable_seed({"request_id": "r"})
    assert stable_seed({"request_id": "r"}) != stable_seed({"request_id": "s"})


def test_echo_reverse_prefix_and_validation():
    h = EchoHandler()
    batch = [{"request_id": "1", "prompt": "abc def"}, {"request_id": "2", "prompt": "xyz"}]
    out = h.run_inference(batch, h.load_model())
    assert [o.text for o in out] == ["fed cba", "zyx"] and out[0].tokens_out == 2
    p = EchoHandler(mode="prefix", prefix=">> ")
    assert p.run_inference(batch[:1], None)[0].text == ">> abc def"
    with pytest.raises(RequestRejected):
        h.validate({"request_id": "3", "prompt": ""})
    assert h.describe()["device"] == "cpu"
    with pytest.raises(ValueError):
        EchoHandler(mode="shout")


def test_versions_sort_naturally():
    assert sorted(["10", "9", "1.10", "1.9", "2"], key=version_sort_key) == ["1.9", "1.10", "2", "9", "10"]


def test_manifest_roundtrip_and_local_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.bin").write_bytes(b"\0\1")
    (tmp_path / "manifest.json").write_text("{}")
    files = local_files(tmp_path)
    assert sorted(files) == ["a.txt", "sub/b.bin"] and files["a.txt"] == sha256_file(tmp_path / "a.txt")
    m = Manifest("n", "1", "EchoHandler", files, "2025-01-01T00:00:00Z", {"mode": "prefix"}, {"bytes": 3})
    assert Manifest.from_json(m.to_json()) == m


def test_handler_from_local_dir_uses_manifest(tmp_path):
    m = Manifest("echo-x", "7", "EchoHandler", {}, "t", {"mode": "prefix", "prefix": "! "})
    (tmp_path / "manifest.json").write_text(m.to_json())
    h = handler_from_dir(tmp_path)
    assert isinstance(h, EchoHandler) and (h.model_name, h.model_version, h.mode) == ("echo-x", "7", "prefix")
    assert set(HANDLER_CLASSES) == {"EchoHandler", "TextHandler", "ImageHandler", "SpeechHandler"}


def test_pool_model_env_override(monkeypatch):
    assert pool_model("text-small") == "smollm2-135m" and pool_model("custom") == "custom"
    monkeypatch.setenv("RSCF_POOL_MODEL_TEXT_LARGE", "org/big-model")
    assert pool_model("text-large") == "org/big-model"


def test_request_too_big_for_the_guard_errors_alone(tmp_path):
    from inference_workers.handlers import TextHandler
    from tests.helpers.tiny_models import build_tiny_text_model

    forget_models()
    handler = TextHandler(build_tiny_text_model(tmp_path / "m"), device="cpu", max_batch=4)
    model = handler.load_model()
    handler.guard = SmallGuard()  # admits almost nothing: every chunk halves down to one request
    handler._estimate = lambda chunk: 99 if any(r["request_id"] == "huge" for r in chunk) else 1
    batch = [{"request_id": rid, "prompt": "hi", "params": {"max_tokens": 2, "temperature": 0.0}}
             for rid in ("a", "huge", "b")]
    out = handler.run_inference(batch, model)
    assert [o.error for o in out] == [None, "insufficient_device_memory", None]
    assert out[0].tokens_out == 2 and out[2].tokens_out == 2
