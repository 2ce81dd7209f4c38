"""Validation, sanitising and template expansion."""

from dataclasses import replace

import pytest

from operators.templates import InMemoryTemplateStore, TemplateError, placeholders, render
from operators.validate import sanitize_text, validate_prompt
from rscf.settings import SETTINGS


def rec(**kw):
    base = {
        "request_id": "r1",
        "tenant_id": "t1",
        "modality": "TEXT",
        "prompt": "hello",
        "params": {},
        "priority": "NORMAL",
        "template_id": None,
        "template_vars": {},
        "metadata": {},
        "created_at": 1_700_000_000_000,
    }
    base.update(kw)
    return base


def test_sanitize_nfkc_controls_and_whitespace():
    raw = "  \u200bＩｇｎｏｒｅ\x00 this\x07\tnow\r\nok\u2028x   "
    assert sanitize_text(raw) == "Ignore this\tnow\nok\nx"


def test_ok_record_is_sanitised_and_params_completed():
    out = validate_prompt(rec(prompt="  ｈｉ  there \x01"))
    assert out.ok and out.reason is None
    assert out.record["prompt"] == "hi there"
    assert set(out.record["params"]) >= {"max_tokens", "voice", "seed"}


@pytest.mark.parametrize(
    "kw,reason",
    [
        ({"prompt": " \x00 \u200b "}, "empty_prompt"),
        ({"modality": "UNKNOWN"}, "unknown_modality"),
        ({"modality": None}, "unknown_modality"),
        ({"request_id": ""}, "missing_field"),
        ({"tenant_id": "a\x1fb"}, "invalid_tenant_id"),  # the Kafka key separator (schemas.keys)
        ({"prompt": "x" * (SETTINGS.limits.max_prompt_chars + 1)}, "prompt_too_long"),
        ({"modality": "AUDIO", "prompt": "x" * (SETTINGS.limits.max_audio_chars + 1)}, "prompt_too_long"),
        ({"params": {"max_tokens": 0}}, "param_out_of_range"),
        ({"params": {"max_tokens": SETTINGS.limits.max_text_tokens + 1}}, "param_out_of_range"),
        ({"params": {"temperature": 2.5}}, "param_out_of_range"),
        ({"params": {"temperature": float("nan")}}, "param_out_of_range"),
        ({"params": {"top_p": 0.0}}, "param_out_of_range"),
        ({"modality": "IMAGE", "params": {"width": 8}}, "param_out_of_range"),
        ({"modality": "IMAGE", "params": {"width": 100}}, "param_not_multiple_of_8"),
        ({"modality": "IMAGE", "params": {"height": 2048}}, "param_out_of_range"),
        ({"modality": "IMAGE", "params": {"steps": 0}}, "param_out_of_range"),
        ({"modality": "AUDIO", "params": {"voice": "darth"}}, "invalid_voice"),
        ({"params": {"seed": -1}}, "param_out_of_range"),
    ],
)
def test_refusals_have_stable_reasons(kw, reason):
    out = validate_prompt(rec(**kw))
    assert not out.ok
    assert out.reason == reason, out.detail
    assert out.detail


def test_boundaries_accepted():
    assert validate_prompt(rec(params={"temperature": 0.0, "top_p": 1.0, "max_tokens": 1})).ok
    assert validate_prompt(rec(modality="IMAGE", params={"width": 16, "height": 1024, "steps": 200})).ok
    assert validate_prompt(rec(modality="AUDIO", params={"voice": "joe"})).ok


def test_limits_can_be_tightened():
    tight = replace(SETTINGS.limits, max_prompt_chars=5)
    assert validate_prompt(rec(prompt="123456"), limits=tight).reason == "prompt_too_long"


STORE = InMemoryTemplateStore({"ad": "Write an ad for {{product}} in a {{ tone }} tone. {{prompt}}"})


def test_template_expanded_with_prompt_var():
    out = validate_prompt(
        rec(prompt="Keep it short.", template_id="ad", template_vars={"product": "Nimbus", "tone": "warm"}),
        templates=STORE,
    )
    assert out.ok
    assert out.record["prompt"] == "Write an ad for Nimbus in a warm tone. Keep it short."


def test_template_without_user_prompt_is_not_empty():
    out = validate_prompt(rec(prompt="", template_id="ad", template_vars={"product": "a", "tone": "b"}), STORE)
    assert out.ok and out.record["prompt"].startswith("Write an ad for a")


@pytest.mark.parametrize(
    "variables,fragment",
    [({"product": "x"}, "missing tone"), ({"product": "x", "tone": "y", "colour": "z"}, "unexpected colour")],
)
def test_template_variable_errors(variables, fragment):
    out = validate_prompt(rec(template_id="ad", template_vars=variables), STORE)
    assert out.reason == "template_variables" and fragment in out.detail


def test_unknown_template():
    assert validate_prompt(rec(template_id="nope"), STORE).reason == "unknown_template"
    assert validate_prompt(rec(template_id="ad"), None).reason == "unknown_template"


def test_template_values_are_not_re_expanded():
    assert render("A {{a}} B {{b}}", {"a": "{{b}}", "b": "x"}).text == "A {{b}} B x"


def test_malformed_template_refused():
    with pytest.raises(TemplateError):
        placeholders("hello {{ name")
    with pytest.raises(TemplateError):
        InMemoryTemplateStore().put("bad", "x {{1abc}}")


def test_a_template_store_that_is_down_is_not_the_prompts_fault():
    from operators.templates import RedisTemplateStore

    class Down:
        calls = 0

        def hget(self, key, field):
            Down.calls += 1
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    store = RedisTemplateStore(Down(), backoff_s=60)
    for _ in range(3):
        out = validate_prompt(rec(template_id="greeting"), store)
        assert not out.ok and out.reason == "templates_unavailable" and "Connection refused" in out.detail
    assert Down.calls == 1  # marked down after the first failure: one connection attempt per backoff
