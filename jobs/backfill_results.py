"""A backfill's results writer: the lane's finals of one backfill -> Parquet parts and a manifest next to
the input (`<prefix>/_results/part-NNNNN.parquet`, `<prefix>/_results/_manifest.json`).

Runs as its own process (`python -m jobs.backfill_results --plan PLAN`, started by `rscf backfill
start|resume`) until every row of the plan has a result or a dead letter. It reads the lane's finals
topic as a read_committed consumer of its own group and commits its offsets only after a part is in
object storage; at start it reads the request ids of the parts already there, so a final read again
(after a crash of the writer, or a rerun of the backfill) is never written twice: one result row per
request id. Its progress (rows finished, dead, total) goes to the Pushgateway as
`rscf_backfill_rows_*{backfill=...}` next to the ingest job's Flink counters.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

from jobs.config import JobConfig, ROLE_SCHEMAS
from operators.backfill import (
    DEAD_LETTERS_DIR, MANIFEST, RESULT_COLUMNS, BackfillSpec, Manifest, file_tag, parse_request_id, result_row,
)
from rscf.clock import now_ms
from rscf.s3_security import ADMIN, JOB
from rscf.settings import SETTINGS

log = logging.getLogger("rscf.backfill.results")


def _schema():
    import pyarrow as pa

    return pa.schema([("request_id", pa.string()), ("file", pa.string()), ("row", pa.int64()),
                      ("status", pa.string()), ("reason", pa.string()), ("output_text", pa.string()),
                      ("artifact_key", pa.string()), ("model_name", pa.string()), ("model_version", pa.string()),
                      ("pool", pa.string()), ("cost_units", pa.float64()), ("completed_at_ms", pa.int64())])


class ResultsStore:
    """The `_results/` folder of one backfill in object storage."""

    def __init__(self, spec: BackfillSpec, client=None, identity: str = ADMIN):
        from rscf.s3 import s3_client

        self.spec = spec
        self.client = client or s3_client(identity=identity)  # the job's key in the job, the admin's in the CLI
        self.prefix = spec.results_prefix

    def keys(self, sub: str = "") -> list[str]:
        return sorted(o.object_name for o in self.client.list_objects(
            self.spec.bucket, prefix=self.prefix + sub, recursive=True))

    def parts(self) -> list[str]:
        return [k for k in self.keys("part-") if k.endswith(".parquet")]

    def get(self, key: str) -> bytes:
        resp = self.client.get_object(self.spec.bucket, key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(self.spec.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def rows(self) -> list[dict[str, Any]]:
        """Every result row written so far (tests, `rscf backfill status --results`)."""
        import pyarrow.parquet as pq

        out: list[dict[str, Any]] = []
        for key in self.parts():
            out.extend(pq.read_table(io.BytesIO(self.get(key))).to_pylist())
        return out

    def dead_letters(self) -> list[dict[str, Any]]:
        """Committed dead-letter rows (the ingest job's part files; in-progress ones are hidden `.part-*`)."""
        out = []
        for key in self.keys(DEAD_LETTERS_DIR + "/"):
            if key.rsplit("/", 1)[-1].startswith((".", "_")):
                continue
            out.extend(json.loads(line) for line in self.get(key).decode().splitlines() if line.strip())
        return out

    def manifest(self) -> Manifest | None:
        try:
            return Manifest.from_json(self.get(self.prefix + MANIFEST).decode())
        except Exception:  # noqa: BLE001 - none yet (S3Error NoSuchKey)
            return None

    def write_manifest(self, manifest: Manifest) -> None:
        self.put(self.prefix + MANIFEST, manifest.to_json().encode(), "application/json")

    def write_part(self, seq: int, rows: list[dict[str, Any]]) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{c: r.get(c) for c in RESULT_COLUMNS} for r in rows], schema=_schema())
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        key = f"{self.prefix}part-{seq:05d}.parquet"
        self.put(key, buf.getvalue())
        return key


class ResultsWriter:
    def __init__(self, manifest: Manifest, lane: str = "backfill", part_rows: int = 20_000, part_s: float = 5.0,
                 store: ResultsStore | None = None, bootstrap: str | None = None):
        self.spec = BackfillSpec.from_dict(manifest.spec)
        self.manifest = manifest
        self.store = store or ResultsStore(self.spec, identity=JOB)
        self.cfg = JobConfig(topic_suffix=lane, bootstrap=bootstrap or SETTINGS.kafka_bootstrap)
        self.part_rows, self.part_s = part_rows, part_s
        self.files_by_tag = {file_tag(f["file"]): f["file"] for f in manifest.input_files}
        self.seen: set[str] = set()
        self.counts: dict[str, int] = {}
        parts = self.store.parts()
        for row in self.store.rows():
            if row["request_id"] not in self.seen:
                self.seen.add(row["request_id"])
                self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        self.seq = 1 + max((int(k.rsplit("part-", 1)[1].split(".")[0]) for k in parts), default=0)
        self.dead = 0
        self.buffer: list[dict[str, Any]] = []

    def consumer(self):
        from confluent_kafka import Consumer

        from rscf.kafka_clients import client_security  # the operator's: started by `rscf backfill`

        c = Consumer({"bootstrap.servers": self.cfg.bootstrap, **client_security(), "group.id": f"rscf-backfill-results-{self.spec.backfill_id}",
                      "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                      "enable.auto.commit": False})
        c.subscribe([self.cfg.content])
        return c

    def take(self, final: dict[str, Any]) -> bool:
        """Buffer a final of this backfill not written before; True if taken."""
        rid = str(final.get("request_id") or "")
        parsed = parse_request_id(rid)
        if parsed is None or parsed[0] != self.spec.backfill_id or rid in self.seen:
            return False
        if final.get("tenant_id") and final["tenant_id"] != self.spec.tenant:
            return False
        row = result_row(final, self.files_by_tag)
        if row is None:
            return False
        self.seen.add(rid)
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        self.buffer.append(row)
        return True

    def done(self) -> bool:
        return len(self.seen) + self.dead >= self.manifest.rows_total

    def flush(self, consumer=None) -> None:
        if self.buffer:
            key = self.store.write_part(self.seq, self.buffer)
            self.seq += 1
            self.buffer = []
            log.info("wrote %s", key)
        if consumer is not None:
            try:
                consumer.commit(asynchronous=False)
            except Exception:  # noqa: BLE001 - nothing consumed yet ("no offset to commit")
                pass
        self.dead = len(self.store.dead_letters())
        self.write_manifest()

    def write_manifest(self) -> None:
        m = self.manifest
        m.counts = {**self.counts, "DEAD_LETTER": self.dead}
        m.result_parts = self.store.parts()
        m.dead_letter_files = [k for k in self.store.keys(DEAD_LETTERS_DIR + "/")
                               if not k.rsplit("/", 1)[-1].startswith((".", "_"))]
        if self.done() and m.finished_at_ms is None:
            m.finished_at_ms, m.state = now_ms(), "FINISHED"
        self.store.write_manifest(m)
        push_progress(self.spec.backfill_id, m.rows_total, len(self.seen), self.dead)

    def run(self, timeout_s: float | None = None) -> Manifest:
        from schemas.serde import TopicSerde

        serde = TopicSerde(self.cfg.content, self.cfg.registry_url, schema_name=ROLE_SCHEMAS["content"])
        consumer = self.consumer()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        last_flush = time.monotonic()
        try:
            self.flush(consumer)
            while not self.done() and (deadline is None or time.monotonic() < deadline):
                for msg in consumer.consume(1000, 0.5):
                    if not msg.error() and msg.value() is not None:
                        try:
                            self.take(serde.decode(msg.value()))
                        except Exception:  # noqa: BLE001 - an undecodable final is the live dead letters' business
                            log.exception("undecodable final at %s/%s", msg.partition(), msg.offset())
                if len(self.buffer) >= self.part_rows or time.monotonic() - last_flush >= self.part_s:
                    self.flush(consumer)
                    last_flush = time.monotonic()
            self.flush(consumer)
        finally:
            consumer.close()
        return self.manifest


def push_progress(backfill_id: str, total: int, finished: int, dead: int) -> None:
    """Progress gauges to the Pushgateway (group per backfill); silent when it is not there."""
    try:
        from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

        reg = CollectorRegistry()
        for name, value, doc in (("rows_total", total, "rows the backfill's plan counted"),
                                 ("rows_finished", finished, "rows with a result written"),
                                 ("rows_dead", dead, "rows in the dead-letter files")):
            Gauge(f"rscf_backfill_{name}", doc, ["backfill"], registry=reg).labels(backfill_id).set(value)
        from rscf.monitoring_security import push_handler, pushgateway_url

        # the Pushgateway takes clients with a certificate of the stack's CA only (rscf/monitoring_security.py)
        push_to_gateway(pushgateway_url(), job=f"rscf-backfill-{backfill_id}", registry=reg, timeout=2,
                        handler=push_handler())
    except Exception:  # noqa: BLE001 - metrics are best effort
        log.debug("pushgateway unreachable", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="backfill_results")
    p.add_argument("--plan", required=True)
    p.add_argument("--lane", default="backfill")
    p.add_argument("--timeout-s", type=float, default=0.0)
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    plan = json.loads(Path(ns.plan).read_text())
    manifest = Manifest.from_json(json.dumps(plan["manifest"]))
    store = ResultsStore(BackfillSpec.from_dict(manifest.spec), identity=JOB)
    previous = store.manifest()
    if previous is not None and previous.started_at_ms:
        manifest.started_at_ms = previous.started_at_ms  # a resume keeps the first start
    ResultsWriter(manifest, ns.lane, store=store).run(ns.timeout_s or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
