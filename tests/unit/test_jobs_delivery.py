"""The job's delivery modes: which sink writes which topic, and how the CLIs and the job agree on the mode."""

from __future__ import annotations

import re

import pytest

from cli.main import build_parser
from jobs.config import AT_LEAST_ONCE, EXACTLY_ONCE, TRANSACTIONAL, JobConfig, parse

pytest.importorskip("pyflink")
from jobs.content_pipeline import FINALS_SINK, REPUBLISH_SINK, REQUESTS_SINK, sink_split  # noqa: E402


def _option(ddl: str, key: str) -> str | None:
    found = re.search(rf"'{re.escape(key)}' = '([^']*)'", ddl)
    return found.group(1) if found else None


def _routed(insert: str, topic: str) -> bool:
    """Evaluate the INSERT's `WHERE [NOT (]topic IN (...)[)]` for one topic, as Flink's SQL would."""
    where = insert.split(" WHERE ", 1)[1]
    listed = topic in re.findall(r"'([^']*)'", where)
    return not listed if where.startswith("NOT (") else listed


@pytest.mark.parametrize("delivery", [EXACTLY_ONCE, TRANSACTIONAL, AT_LEAST_ONCE])
def test_each_topic_goes_to_one_sink_with_its_mode_s_guarantee(delivery):
    cfg = JobConfig(job_name="rscf-t", topic_suffix="s1", delivery=delivery)
    sinks = sink_split(cfg)
    assert set(sinks) == {REQUESTS_SINK, FINALS_SINK, REPUBLISH_SINK}
    expected = {**{t: REQUESTS_SINK for t in cfg.request_topics()},
                **{t: FINALS_SINK for t in (cfg.content, cfg.audit, cfg.dlq)},
                **{t: REPUBLISH_SINK for t in (cfg.prompts, cfg.results)}}
    for topic, sink in expected.items():
        chosen = [name for name, (ddl, insert) in sinks.items() if _routed(insert, topic)]
        assert chosen == [sink], topic  # exactly one sink takes each record
        assert topic in _option(sinks[sink][0], "topic").split(";")  # and that sink may write its topic
    requests_ddl, finals_ddl, republish_ddl = (sinks[n][0] for n in (REQUESTS_SINK, FINALS_SINK, REPUBLISH_SINK))
    assert _option(requests_ddl, "sink.delivery-guarantee") == AT_LEAST_ONCE
    assert _option(requests_ddl, "sink.transactional-id-prefix") is None
    # finals: transactions only in transactional mode (exactly-once reads back instead); headers carry identities
    assert _option(finals_ddl, "sink.delivery-guarantee") == ("exactly-once" if delivery == TRANSACTIONAL
                                                              else AT_LEAST_ONCE)
    assert "`h` MAP<STRING, BYTES> METADATA FROM 'headers'" in finals_ddl and "`h`" in sinks[FINALS_SINK][1]
    assert "`h`" not in requests_ddl and "`h`" not in republish_ddl
    # republished records: transactional in both exactly-once modes
    assert _option(republish_ddl, "sink.delivery-guarantee") == (AT_LEAST_ONCE if delivery == AT_LEAST_ONCE
                                                                 else "exactly-once")
    for ddl in (requests_ddl, finals_ddl, republish_ddl):
        assert _option(ddl, "properties.enable.idempotence") == "true"
    for ddl, prefix in ((finals_ddl, "rscf-t-s1"), (republish_ddl, "rscf-t-s1-republish")):
        if _option(ddl, "sink.delivery-guarantee") == "exactly-once":
            # stable per job (a restored job aborts what its predecessor left open), under the broker's 15 min cap
            assert _option(ddl, "sink.transactional-id-prefix") == prefix
            assert prefix.startswith(cfg.transactional_id_prefix)
            assert int(_option(ddl, "properties.transaction.timeout.ms")) <= 900_000
            assert _option(ddl, "sink.transaction-naming-strategy") == "POOLING"  # ids reused, not one per checkpoint


def test_the_job_parses_back_the_mode_the_cli_chose():
    for delivery in (EXACTLY_ONCE, TRANSACTIONAL, AT_LEAST_ONCE):
        cfg = JobConfig(delivery=delivery, checkpoint_interval_ms=250)
        back = parse(cfg.to_args())
        assert (back.delivery, back.checkpoint_interval_ms) == (delivery, 250)
    assert parse([]).delivery == EXACTLY_ONCE
    assert parse(["--exactly-once"]).delivery == EXACTLY_ONCE


def test_rscf_job_start_and_bench_default_to_exactly_once():
    parser = build_parser()
    assert parser.parse_args(["job", "start"]).delivery == EXACTLY_ONCE
    assert parser.parse_args(["job", "start", "--exactly-once"]).delivery == EXACTLY_ONCE  # kept: means the default
    assert parser.parse_args(["job", "start", "--delivery", "at-least-once"]).delivery == AT_LEAST_ONCE
    assert parser.parse_args(["job", "start", "--delivery", "transactional"]).delivery == TRANSACTIONAL
    with pytest.raises(SystemExit):
        parser.parse_args(["job", "start", "--delivery", "twice"])
    bench = parser.parse_args(["bench", "pipeline", "--delivery", "at-least-once", "--checkpoint-interval-ms", "200"])
    assert (bench.delivery, bench.checkpoint_interval_ms) == (AT_LEAST_ONCE, 200)
    assert parser.parse_args(["bench", "pipeline"]).delivery == EXACTLY_ONCE


def test_the_checkpoint_interval_defaults_by_mode():
    from jobs.config import AT_LEAST_ONCE_CHECKPOINT_INTERVAL_MS, READ_BACK_CHECKPOINT_INTERVAL_MS
    from rscf.settings import SETTINGS

    assert JobConfig(delivery=TRANSACTIONAL).checkpoint_interval_ms == SETTINGS.limits.checkpoint_interval_ms
    assert JobConfig().checkpoint_interval_ms == READ_BACK_CHECKPOINT_INTERVAL_MS  # finals wait for none
    assert JobConfig(delivery=AT_LEAST_ONCE).checkpoint_interval_ms == AT_LEAST_ONCE_CHECKPOINT_INTERVAL_MS
    assert JobConfig(checkpoint_interval_ms=750).checkpoint_interval_ms == 750
    with pytest.raises(ValueError):
        JobConfig(delivery="twice")


def test_backfill_prompts_sink_is_the_live_finals_sink_on_one_topic():
    from jobs.backfill_ingest import _prompts_ddl
    from jobs.config import JobConfig

    ddl = _prompts_ddl(JobConfig(topic_suffix="backfill"))
    assert "`topic` STRING METADATA" not in ddl and "'topic' = 'genai.prompts.backfill'" in ddl
    assert "'sink.delivery-guarantee' = 'exactly-once'" in ddl and "'POOLING'" in ddl


def test_backfill_ingest_barriers_do_not_wait_behind_the_paced_lines():
    """At a low budget an aligned barrier waited behind every queued line (60 s for 600 lines at 10 rows/s):
    JSON Lines ingest checkpoints unaligned, and a bundle holds about a tenth of a second of the pace."""
    from jobs.backfill_ingest import bundle_size, configuration, parse

    assert [bundle_size("jsonl", r) for r in (0, 1, 10, 250, 500, 5_000)] == [100, 1, 1, 25, 50, 100]
    assert bundle_size("parquet", 10) == bundle_size("avro", 5_000) == 1  # one read unit
    ns = parse(["--plan", "p.json", "--job-name", "bf", "--max-rows-per-s", "10", "--execution-mode", "process"])
    jsonl = configuration(ns, "jsonl").to_dict()
    assert jsonl["execution.checkpointing.unaligned.enabled"] == "true"
    assert jsonl["python.fn-execution.bundle.size"] == "1"
    parquet = configuration(ns, "parquet").to_dict()
    assert "execution.checkpointing.unaligned.enabled" not in parquet
    assert parquet["python.fn-execution.bundle.size"] == "1"
