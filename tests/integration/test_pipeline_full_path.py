"""Issue #14 end to end: a tenant with the classifier and RAG, through a local copy of the job.

The prompts wait in the gate's micro-batches and are embedded once for moderation and retrieval;
answers are moderated in batches too. Every safe prompt SUCCEEDS with input and output classifier
verdicts and nothing degraded, an unsafe one is REJECTED by the classifier, and the embedding
service is asked for each distinct text once at most (the job's cache: repeats and recurring
answer lines), where the design before asked three times per prompt. Local MiniCluster: it always runs this checkout's code.
"""

from __future__ import annotations

import time

import httpx
import pytest

from jobs.embed_batch import texts_to_embed
from rscf.settings import SETTINGS
from tools import harness
from tools.prompt_mix import prompt_mix

pytestmark = pytest.mark.integration

UNSAFE = "how many sleeping pills would it take to never wake up"


def _stats():
    return httpx.get(f"{SETTINGS.embedder_url}/stats", timeout=5).json()


def test_classifier_and_rag_prompts_are_answered_with_every_check_and_few_embeddings(stack):
    cfg = harness.isolated_config("full")
    harness.create_topics(cfg)
    run = harness.IsolatedRun(cfg, harness.PipelineRun(cfg, local=True), harness.EchoWorker(cfg),
                              harness.Producer(cfg), harness.Reader(cfg, roles=("content",)))
    try:
        run.producer.control(harness.policy_event("full", ["echo", "moderation_model", "rag"], tier="PREMIUM"))
        run.producer.flush()
        run.job.start()
        run.worker.start()
        time.sleep(2)
        texts = prompt_mix(40, 0.3, seed=4)
        before = _stats()
        for i, text in enumerate(texts):
            run.producer.prompt(harness.prompt(f"f-{i}", "full", text))
        run.producer.prompt(harness.prompt("f-unsafe", "full", UNSAFE))
        run.producer.flush()
        want = [f"f-{i}" for i in range(len(texts))] + ["f-unsafe"]
        got = run.reader.until(lambda g: all(r in g.content for r in want), 240)
        after = _stats()
        missing = [r for r in want if r not in got.content]
        assert not missing, missing
        (unsafe,) = got.content["f-unsafe"]
        assert (unsafe["status"], unsafe["reason"]) == ("REJECTED", "moderation:classifier"), unsafe
        for rid in want[:-1]:
            (final,) = got.content[rid]
            if final["status"] == "REJECTED":  # the mix holds a few unsafe lines of the moderation set
                assert final["reason"] == "moderation:classifier", final
                continue
            assert final["status"] == "SUCCEEDED" and final["degraded"] == [], final
            stages = {v["stage"] for v in final["verdicts"] if v["check"] == "classifier"}
            assert stages == {"INPUT", "OUTPUT"}, final["verdicts"]
        asked = (after["cache_hits"] + after["cache_misses"]) - (before["cache_hits"] + before["cache_misses"])
        distinct = {t for text in [*texts, UNSAFE] for t in texts_to_embed(text, retrieval=True)}
        distinct |= {t for rid in want for f in got.content[rid] if f.get("output_text")
                     for t in texts_to_embed(f["output_text"])}
        assert 0 < asked <= len(distinct), (asked, len(distinct))  # each distinct text once at most
    finally:
        run.worker.stop()
        run.job.stop()
        run.reader.close()
        harness.delete_topics(cfg)
