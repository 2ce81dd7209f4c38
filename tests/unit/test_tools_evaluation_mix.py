"""The evaluation's request mix: the same requests for every deployment, routed where the mix says."""

from __future__ import annotations

import pytest

from operators.admit import policy_from_dict
from operators.route import primary_pool
from rscf.pools import ECHO, IMAGE, SPEECH, TEXT_SMALL
from tools.evaluation_mix import PREMIUM_EVERY, REAL_CYCLE, kind_of, policies, pools, prompt_record


def _routed(record: dict) -> str:
    policy = {p["tenant_id"]: policy_from_dict(p) for p in policies()}[record["tenant_id"]]
    pool, _why, _c = primary_pool(record, policy.tier, frozenset(policy.features))
    return pool


def test_the_echo_mix_sends_everything_to_the_echo_pool() -> None:
    assert pools("echo") == [ECHO]
    assert {_routed(prompt_record(i, "r", "echo")) for i in range(50)} == {ECHO}


def test_the_real_mix_reaches_every_real_pool_in_its_stated_shares() -> None:
    assert pools("real") == [ECHO, TEXT_SMALL, IMAGE, SPEECH]  # echo first: the outage kills its model
    routed = [_routed(prompt_record(i, "r", "real")) for i in range(10 * len(REAL_CYCLE))]
    assert {p: routed.count(p) for p in set(routed)} == {ECHO: 70, TEXT_SMALL: 10, IMAGE: 10, SPEECH: 10}
    # premium text stays on text-small (short prompts), so no text-large replica is needed
    premium_text = [prompt_record(i, "r", "real") for i in range(200)
                    if i % PREMIUM_EVERY == 0 and kind_of(i, "real") == "text"]
    assert premium_text and all(r["priority"] == "HIGH" and _routed(r) == TEXT_SMALL for r in premium_text)


def test_premium_requests_come_from_premium_tenants_of_every_kind() -> None:
    prem = [prompt_record(i, "r", "real") for i in range(0, 140, PREMIUM_EVERY)]
    assert {r["tenant_id"] for r in prem} == {"eval-prem", "eval-prem-real"}
    assert {r["modality"] for r in prem} == {"TEXT", "IMAGE", "AUDIO"}


def test_an_unknown_mix_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown mix"):
        kind_of(0, "gpu")
