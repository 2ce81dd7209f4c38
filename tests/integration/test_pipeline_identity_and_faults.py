"""Issue #13 on the real cluster: request identity per tenant, a record no sink can write, degraded modes.

- two tenants with the same request_id each get their own final; a tenant reusing its own id gets a
  REJECTED final with reason duplicate_request_id (never silence);
- a ~1 MB undecodable record on the prompts topic is one dead letter whose payload is in object
  storage (claim check), and the job stays RUNNING and answers the next prompt (it used to fail
  its sink and restart in a loop);
- with the embedding service stopped, every final says the classifier and RAG were skipped, and a
  tenant whose moderation fails closed is REJECTED with reason moderation_unavailable.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tools import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(stack):
    with harness.isolated_run("idf") as r:
        for tenant in ("acme", "beta"):
            r.producer.control(harness.policy_event(tenant, ["echo"]))
        r.producer.control(harness.policy_event("prem", ["echo", "rag", "moderation_model"], tier="PREMIUM"))
        closed = harness.policy_event("strict", ["echo", "moderation_model"], tier="PREMIUM")
        closed["tenant_policy"]["moderation_fail_closed"] = True
        r.producer.control(closed)
        r.producer.flush()
        r.job.start()
        r.worker.start()
        time.sleep(2)  # policies are read before the prompts below (control replays from the start)
        yield r


def _finals(got, rid):
    return {(f["tenant_id"], f["status"], f["reason"]): f for f in got.content.get(rid, [])}


def test_two_tenants_with_the_same_request_id_each_get_their_own_final(run):
    for tenant in ("acme", "beta"):
        run.producer.prompt(harness.prompt("shared-1", tenant, f"from {tenant}"))
    run.producer.flush()
    run.reader.until(lambda g: len(g.content.get("shared-1", [])) >= 2 and len(g.audit.get("shared-1", [])) >= 2, 120)
    got = run.reader.settle(3)
    assert len(got.content["shared-1"]) == 2 and len(got.audit["shared-1"]) == 2, got.content.get("shared-1")
    by_tenant = {f["tenant_id"]: f for f in got.content["shared-1"]}
    for tenant in ("acme", "beta"):
        assert by_tenant[tenant]["status"] == "SUCCEEDED"
        assert by_tenant[tenant]["output_text"] == f"from {tenant}"[::-1]
    assert {a["tenant_id"] for a in got.audit["shared-1"]} == {"acme", "beta"}


def test_a_tenant_reusing_its_request_id_gets_a_rejected_duplicate_final(run):
    run.producer.prompt(harness.prompt("reuse-1", "acme", "first"))
    run.producer.prompt(harness.prompt("reuse-1", "acme", "second"))  # while the first is pending
    run.producer.flush()
    run.reader.until(lambda g: len(g.content.get("reuse-1", [])) >= 2 and len(g.audit.get("reuse-1", [])) >= 2, 120)
    run.producer.prompt(harness.prompt("reuse-1", "acme", "third"))  # after it finished, within the dedup TTL
    run.producer.flush()
    run.reader.until(lambda g: len(g.content.get("reuse-1", [])) >= 3, 120)
    got = run.reader.settle(3)
    finals = sorted((f["status"], f["reason"] or "", f["output_text"] or "") for f in got.content["reuse-1"])
    assert finals == [("REJECTED", "duplicate_request_id", ""), ("REJECTED", "duplicate_request_id", ""),
                      ("SUCCEEDED", "", "tsrif")], finals
    assert sorted(a["reason"] or "" for a in got.audit["reuse-1"]) == ["", "duplicate_request_id",
                                                                        "duplicate_request_id"]


def test_a_megabyte_of_undecodable_bytes_is_one_claim_checked_dead_letter_and_the_job_goes_on(run, stack):
    from confluent_kafka import Producer

    from rscf import kafka_clients
    from rscf.s3 import s3_client

    poison = b"\x01" + bytes(range(256)) * 3900  # 998 401 bytes: under the broker's limit, over what a dead letter may be
    big = Producer(kafka_clients.producer_config(run.cfg.bootstrap, 1, **{"message.max.bytes": 1_100_000}))
    big.produce(run.cfg.prompts, poison, key=b"acme")
    assert big.flush(30) == 0
    before = len(run.reader.got.dlq)
    run.reader.until(lambda g: len(g.dlq) > before, 120)
    run.producer.prompt(harness.prompt("after-poison", "acme", "still here"))
    run.producer.flush()
    got = run.reader.until(lambda g: "after-poison" in g.content, 120)
    got = run.reader.settle(3)
    (dead,) = [d for d in got.dlq[before:] if d.get("original_size") == len(poison)]
    assert (dead["stage"], dead["reason"], dead["payload_status"]) == ("decode", "not_confluent_framed", "claim_check")
    assert dead["original"] == poison[:4096] and dead["source_topic"] == run.cfg.prompts
    bucket, _, key = dead["payload_uri"].removeprefix("s3://").partition("/")
    obj = s3_client().get_object(bucket, key)
    try:
        assert obj.read() == poison
    finally:
        obj.close()
        obj.release_conn()
    assert got.content["after-poison"][0]["status"] == "SUCCEEDED"
    job = httpx.get(f"{stack.flink_url}/jobs/{run.job.job_id}", timeout=10).json()
    assert job["state"] == "RUNNING", job["state"]
    history = httpx.get(f"{stack.flink_url}/jobs/{run.job.job_id}/exceptions", timeout=10).json()
    assert not history.get("exceptionHistory", {}).get("entries"), history  # it never failed, let alone looped


@pytest.mark.stack_lifecycle
def test_with_the_embedding_service_down_every_final_says_what_was_skipped(run, stack):
    """Stops the stack's embedding service by its PID file, and starts it again afterwards."""
    from deploy.local import stack as local_stack
    from deploy.local.processes import stop_recorded

    assert stop_recorded(stack.paths.pids / "embedder.pid"), "the embedding service was not running"
    try:
        ids = [f"emb-{i}" for i in range(6)]
        for rid in ids:
            run.producer.prompt(harness.prompt(rid, "prem", f"tell me about {rid}"))
        run.producer.prompt(harness.prompt("emb-closed", "strict", "tell me something"))
        run.producer.flush()
        want = [*ids, "emb-closed"]
        got = run.reader.until(lambda g: all(r in g.content and r in g.audit for r in want), 180)
        for rid in ids:
            (final,), (audit,) = got.content[rid], got.audit[rid]
            assert final["status"] == "SUCCEEDED", final
            skipped = {(d["stage"], d["outcome"], d["dependency"]) for d in final["degraded"]}
            assert skipped == {("input_classifier", "skipped", "embedding_service"),
                               ("rag", "skipped", "embedding_service"),
                               ("output_classifier", "skipped", "embedding_service")}, (rid, final["degraded"])
            assert audit["degraded"] == final["degraded"]
            assert any(v["check"] == "classifier" and v["reason"].startswith("classifier unavailable")
                       for v in final["verdicts"])
        (closed,) = got.content["emb-closed"]
        assert (closed["status"], closed["reason"]) == ("REJECTED", "moderation_unavailable")
        assert closed["degraded"][0]["outcome"] == "failed_closed"
    finally:
        local_stack.up(only=["embedder"])
