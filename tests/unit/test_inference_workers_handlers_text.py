"""TextHandler on a tiny random Llama: batching mechanics, limits and seeds (not content quality)."""

from __future__ import annotations

import pytest

from inference_workers.handlers import RequestRejected, TextHandler
from inference_workers.handlers.device import forget_models
from tests.helpers.tiny_models import build_tiny_text_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    forget_models()
    path = build_tiny_text_model(tmp_path_factory.mktemp("tiny-text"))
    handler = TextHandler(path, device="cpu", max_batch=8)
    return handler, handler.load_model()


def req(rid, prompt="hello world", **params):
    return {"request_id": rid, "prompt": prompt, "params": params}


def test_loads_with_left_padding_pad_token_and_chat_template(tiny):
    handler, model = tiny
    assert model.tokenizer.padding_side == "left"
    assert model.tokenizer.pad_token is not None  # the tiny tokenizer ships without one
    assert model.use_chat_template
    rendered = handler._render(model, "hi")
    assert rendered.startswith("<|im_start|>user\nhi") and rendered.endswith("<|im_start|>assistant\n")
    d = handler.describe()
    assert d["device"] == "cpu" and d["dtype"] == "float32" and d["max_batch"] == 8


def test_budgets_respected_and_order_preserved(tiny):
    handler, model = tiny
    budgets = [3, 9, 1, 6, 12]
    batch = [req(str(i), "word " * (i * 3 + 1), max_tokens=b, temperature=0.0) for i, b in enumerate(budgets)]
    out = handler.run_inference(batch, model)
    assert [o.tokens_out for o in out] == budgets  # EOS is unreachable in the tiny model
    # each row equals what the same request produces alone: order kept, padding harmless
    for i in (0, 3):
        alone = handler.run_inference([batch[i]], model)[0]
        assert alone.text == out[i].text and alone.tokens_out == out[i].tokens_out


def test_seed_determinism_per_request(tiny):
    handler, model = tiny
    batch = [req("a", max_tokens=10, temperature=1.5, seed=7), req("b", max_tokens=10, temperature=1.5, seed=8)]
    first = handler.run_inference(batch, model)
    second = handler.run_inference(list(reversed(batch)), model)
    assert first[0].text == second[1].text and first[1].text == second[0].text
    assert first[0].text != first[1].text  # different seeds sample differently
    # no seed: derived from request_id, so a retry regenerates the same text
    r1 = handler.run_inference([req("retry-me", max_tokens=8, temperature=1.0)], model)[0]
    r2 = handler.run_inference([req("retry-me", max_tokens=8, temperature=1.0)], model)[0]
    assert r1.text == r2.text


def test_top_p_tiny_is_greedy(tiny):
    handler, model = tiny
    greedy = handler.run_inference([req("g", max_tokens=6, temperature=0.0)], model)[0]
    nucleus = handler.run_inference([req("n", max_tokens=6, temperature=1.0, top_p=1e-6, seed=1)], model)[0]
    assert greedy.text == nucleus.text


@pytest.mark.parametrize("bad,reason", [
    (req("x", ""), "empty_prompt"),
    (req("x", "a" * 5000), "prompt_too_long"),
    (req("x", max_tokens=0), "max_tokens_out_of_range"),
    (req("x", max_tokens=100_000), "max_tokens_out_of_range"),
    (req("x", temperature=-1.0), "temperature_out_of_range"),
    (req("x", top_p=0.0), "top_p_out_of_range"),
])
def test_validate_rejects(tiny, bad, reason):
    handler, _ = tiny
    with pytest.raises(RequestRejected, match=reason):
        handler.validate(bad)


def test_batch_key_buckets_by_budget(tiny):
    handler, _ = tiny
    assert handler.batch_key(req("a", max_tokens=10)) == handler.batch_key(req("b", max_tokens=16))
    assert handler.batch_key(req("a", max_tokens=17)) == ("tokens", 32)
    assert handler.batch_key(req("a")) == ("tokens", 64)  # default budget 64


def test_max_batch_splits_into_chunks(tmp_path):
    forget_models()
    path = build_tiny_text_model(tmp_path / "m")
    handler = TextHandler(path, device="cpu", max_batch=2)
    model = handler.load_model()
    out = handler.run_inference([req(str(i), max_tokens=i + 1, temperature=0.0) for i in range(5)], model)
    assert [o.tokens_out for o in out] == [1, 2, 3, 4, 5]
