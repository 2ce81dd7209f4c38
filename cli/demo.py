"""The newcomer's flow: bring everything up, push a mixed sample of prompts through, show what came out.

Used by `rscf demo` and by the end-to-end test, so what the test checks is what
the user runs.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from rscf.kafka_clients import client_security, producer_config
from rscf.pools import DEMO_POOLS
from rscf.settings import SETTINGS

DEMO_DIR = SETTINGS.paths.repo / "deploy" / "demo"
SAMPLE_PROMPTS = DEMO_DIR / "prompts.jsonl"
SAMPLE_TENANTS = DEMO_DIR / "tenants.jsonl"
KNOWLEDGE_BASE = SETTINGS.paths.repo / "operators" / "data" / "knowledge_base.jsonl"

Progress = Callable[[str], None]


class DemoError(RuntimeError):
    """A step of the flow failed; the message says which and where to look."""


def rscf(*args: str, timeout: float = 1800) -> dict | list | None:
    """Run another `rscf` command with --json (each area owns its command; the demo only sequences them)."""
    cmd = [str(SETTINGS.paths.venv / "bin" / "rscf"), *args, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise DemoError(f"`rscf {' '.join(args)}` failed (exit {out.returncode}):\n{out.stderr.strip()[-2000:]}")
    text = out.stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return None


# ----------------------------------------------------------------------------- bring-up


def ensure_running(progress: Progress, pools: Iterable[str] = DEMO_POOLS) -> None:
    """Each step is idempotent, so a rerun or a run after Ctrl-C picks up where things stand."""
    from deploy.local import stack

    t0 = time.monotonic()
    stack.up(lambda m: progress(f"stack: {m}"))
    progress(f"stack healthy ({time.monotonic() - t0:.0f} s)")
    progress("models: building or fetching the default models (cached after the first run)")
    rscf("models", "build-defaults", timeout=3600)
    if KNOWLEDGE_BASE.exists():
        rscf("kb", "ingest", str(KNOWLEDGE_BASE))
        progress("knowledge base: ingested into the Redis vector index")
    state = _job_state()
    deadline = time.monotonic() + 90
    while state not in (None, "RUNNING") and time.monotonic() < deadline:
        time.sleep(2)  # a job that is restarting or being created usually gets there by itself
        state = _job_state()
    if state is None:
        progress("pipeline job: submitting to the Flink cluster")
        rscf("job", "start", timeout=600)
    elif state != "RUNNING":
        raise DemoError(
            f"the pipeline job is {state}: see its exceptions in the Flink Web UI ({SETTINGS.flink_url}), "
            "or cancel it (`rscf job stop`) and rerun"
        )
    progress("pipeline job: running")
    pool_args = [arg for pool in pools for arg in ("--pool", pool)]
    rscf("workers", "start", *pool_args, "--wait", "600", timeout=900)
    progress(f"workers: {', '.join(pools)} ready")


TERMINAL_JOB_STATES = ("CANCELED", "FINISHED", "FAILED")


def _job_state() -> str | None:
    """State of the newest non-terminal pipeline job, None when there is none."""
    status = rscf("job", "status") or {}
    for job in status.get("jobs", []):
        if job.get("state") not in TERMINAL_JOB_STATES:
            return job.get("state")
    return None


# ----------------------------------------------------------------------------- producing


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def send_tenant_policies(tenants: list[dict]) -> None:
    from confluent_kafka import Producer

    from schemas.serde import serde_for

    serde = serde_for(SETTINGS.topics.control)
    producer = Producer(producer_config())
    now = datetime.now(timezone.utc)
    for t in tenants:
        event = {
            "event_id": str(uuid.uuid4()),
            "issued_at": now,
            "rollout": None,
            "tenant_policy": {
                "tenant_id": t["tenant_id"],
                "tier": t["tier"],
                "rate_per_s": float(t["rate_per_s"]),
                "burst": int(t["burst"]),
                "features": list(t.get("features", [])),
            },
            "breaker": None,
        }
        producer.produce(SETTINGS.topics.control, key=t["tenant_id"].encode(), value=serde.encode(event))
    if producer.flush(30) != 0:
        raise DemoError("control events were not acknowledged by Kafka")


def build_requests(lines: list[dict], run_id: str) -> list[dict]:
    """PromptRequests with fresh ids; run_id goes into metadata so a report can find its own records."""
    from schemas.prompt_input import prompt_request

    out = []
    for i, line in enumerate(lines):
        obj = dict(line)
        meta = dict(obj.pop("metadata", {}) or {})
        meta["demo_run"] = run_id
        obj["metadata"] = meta
        obj.setdefault("request_id", f"{run_id}-{i:03d}")
        out.append(prompt_request(obj))
    return out


def produce_prompts(requests: list[dict]) -> None:
    from confluent_kafka import Producer

    from schemas.serde import serde_for

    serde = serde_for(SETTINGS.topics.prompts)
    producer = Producer(producer_config())
    for r in requests:
        producer.produce(SETTINGS.topics.prompts, key=r["tenant_id"].encode(), value=serde.encode(r))
        producer.poll(0)
    if producer.flush(30) != 0:
        raise DemoError("prompts were not acknowledged by Kafka")


# ----------------------------------------------------------------------------- following


class OutputFollower:
    """Reads content, audit and dead-letter topics from the offsets they had before the prompts were sent."""

    TOPICS = (SETTINGS.topics.content, SETTINGS.topics.audit, SETTINGS.topics.dlq)

    def __init__(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer(
            {
                "bootstrap.servers": SETTINGS.kafka_bootstrap,
                **client_security(),
                "group.id": f"rscf-demo-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",  # finals are committed with each checkpoint of the job
            }
        )
        md = self._consumer.list_topics(timeout=10)
        assignment = []
        for topic in self.TOPICS:
            for p in md.topics[topic].partitions:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                assignment.append(TopicPartition(topic, p, high))
        self._consumer.assign(assignment)

    def follow(
        self, ids: set[str], timeout_s: float, on_final: Callable[[dict], None] = lambda r: None
    ) -> "FlowOutcome":
        from schemas.serde import DecodeError, serde_for

        outcome = FlowOutcome()
        deadline = time.monotonic() + timeout_s
        # wait for the finals, then a short grace for their audit records
        grace_until = None
        while time.monotonic() < deadline:
            if grace_until is None and ids <= set(outcome.finals):
                grace_until = time.monotonic() + 5
            if grace_until is not None and (time.monotonic() > grace_until or ids <= set(outcome.audits)):
                break
            msg = self._consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            try:
                record = serde_for(msg.topic()).decode(msg.value())
            except DecodeError:
                continue
            rid = record.get("request_id")
            if rid not in ids:
                continue
            if msg.topic() == SETTINGS.topics.content:
                if rid in outcome.finals:
                    outcome.duplicate_finals.append(rid)
                else:
                    outcome.finals[rid] = record
                    on_final(record)
            elif msg.topic() == SETTINGS.topics.audit:
                outcome.audits[rid] = record
            else:
                outcome.dead_letters.append(record)
        self._consumer.close()
        outcome.missing = sorted(ids - set(outcome.finals))
        return outcome


@dataclass
class FlowOutcome:
    finals: dict[str, dict] = field(default_factory=dict)
    audits: dict[str, dict] = field(default_factory=dict)
    dead_letters: list[dict] = field(default_factory=list)
    duplicate_finals: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def run_sample(
    prompts: list[dict], tenants: list[dict], timeout_s: float, progress_bar: bool = True
) -> tuple[list[dict], FlowOutcome]:
    run_id = f"demo-{datetime.now(timezone.utc):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:4]}"
    requests = build_requests(prompts, run_id)
    follower = OutputFollower()
    send_tenant_policies(tenants)
    time.sleep(1.0)  # control events are broadcast state: let them land before the prompts
    produce_prompts(requests)
    ids = {r["request_id"] for r in requests}
    bar = None
    if progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=len(ids), desc="final results", unit="prompt", file=sys.stderr)
    outcome = follower.follow(ids, timeout_s, on_final=lambda r: bar.update(1) if bar else None)
    if bar:
        bar.close()
    return requests, outcome


# ----------------------------------------------------------------------------- summary and report


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarize(requests: list[dict], outcome: FlowOutcome) -> dict[str, Any]:
    by_status: dict[str, list[dict]] = defaultdict(list)
    by_pool: dict[str, list[dict]] = defaultdict(list)
    for r in outcome.finals.values():
        by_status[r["status"]].append(r)
        by_pool[r.get("pool") or "-"].append(r)

    def row(records: list[dict]) -> dict[str, Any]:
        lat = [r["latency"]["total_ms"] for r in records if r.get("latency")]
        return {
            "count": len(records),
            "p50_ms": _pct(lat, 0.5),
            "p95_ms": _pct(lat, 0.95),
            "retries": sum(max(0, (r.get("attempts") or 1) - 1) for r in records),
        }

    modality_latency = defaultdict(list)
    for r in outcome.finals.values():
        if r["status"] == "SUCCEEDED" and r.get("latency"):
            modality_latency[r["modality"]].append(r["latency"]["total_ms"])
    return {
        "submitted": len(requests),
        "finals": len(outcome.finals),
        "audits": len(outcome.audits),
        "missing": outcome.missing,
        "duplicate_finals": outcome.duplicate_finals,
        "dead_letters": len(outcome.dead_letters),
        "by_status": {k: row(v) for k, v in sorted(by_status.items())},
        "by_pool": {k: row(v) for k, v in sorted(by_pool.items())},
        "reasons": dict(Counter(r.get("reason") or "" for r in outcome.finals.values() if r["status"] != "SUCCEEDED")),
        "latency_by_modality_p50_ms": {m: statistics.median(v) for m, v in modality_latency.items()},
    }


def format_summary(summary: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [
        f"submitted {summary['submitted']}, final results {summary['finals']}, audit records {summary['audits']}, "
        f"dead letters {summary['dead_letters']}, missing {len(summary['missing'])}",
        "",
        f"{'status':<12} {'count':>5} {'p50 ms':>8} {'p95 ms':>8} {'retries':>7}",
    ]
    for k, v in summary["by_status"].items():
        lines.append(f"{k:<12} {v['count']:>5} {ms(v['p50_ms']):>8} {ms(v['p95_ms']):>8} {v['retries']:>7}")
    lines += ["", f"{'pool':<12} {'count':>5} {'p50 ms':>8} {'p95 ms':>8} {'retries':>7}"]
    for k, v in summary["by_pool"].items():
        lines.append(f"{k:<12} {v['count']:>5} {ms(v['p50_ms']):>8} {ms(v['p95_ms']):>8} {v['retries']:>7}")
    if summary["reasons"]:
        lines += ["", "rejections and failures: " + ", ".join(f"{k} x{v}" for k, v in summary["reasons"].items())]
    return "\n".join(lines)


def fetch_artifact(uri: str, client=None) -> bytes:
    """The bytes behind an s3:// URI (the stack's object store unless another client is given)."""
    from rscf.s3 import s3_client

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    resp = (client or s3_client()).get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def write_report(requests: list[dict], outcome: FlowOutcome, summary: dict[str, Any], path: Path) -> Path:
    """One self-contained HTML page: outputs inline, each item's audit trail beside it."""
    esc = html.escape
    items = []
    for req in requests:
        rid = req["request_id"]
        final = outcome.finals.get(rid)
        audit = outcome.audits.get(rid)
        body = ""
        if final is None:
            body = "<p class=bad>no final result</p>"
        else:
            if final.get("output_text"):
                body += f"<pre>{esc(final['output_text'])}</pre>"
            for uri in final.get("artifact_uris") or []:
                try:
                    data = fetch_artifact(uri)
                except Exception as exc:  # noqa: BLE001 - the report shows the failure instead
                    body += f"<p class=bad>{esc(uri)}: {esc(str(exc))}</p>"
                    continue
                b64 = base64.b64encode(data).decode()
                if uri.endswith(".png"):
                    body += f'<img src="data:image/png;base64,{b64}" width=128 height=128 title="{esc(uri)}">'
                elif uri.endswith(".wav"):
                    body += f'<audio controls src="data:audio/wav;base64,{b64}"></audio>'
                body += f"<div class=uri>{esc(uri)}</div>"
        trail = esc(json.dumps(audit or final or {}, default=str, indent=1))
        status = final["status"] if final else "MISSING"
        reason = (final or {}).get("reason") or ""
        items.append(
            f"<section class={status.lower()}><h3>{esc(rid)} · {esc(req['tenant_id'])} · {esc(req['modality'])}"
            f" · <b>{esc(status)}</b> {esc(reason)}</h3><p class=prompt>{esc(req['prompt'])}</p>{body}"
            f"<details><summary>audit trail</summary><pre>{trail}</pre></details></section>"
        )
    page = f"""<!doctype html><meta charset=utf-8><title>RSCF demo report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}section{{border:1px solid #ccc;margin:1em 0;
padding:.5em 1em;border-radius:6px}}.succeeded{{border-left:6px solid #2a2}}.rejected{{border-left:6px solid #e90}}
.failed,.missing{{border-left:6px solid #d22}}.prompt{{color:#555}}.uri{{font-size:.8em;color:#888}}
pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5em}}img{{image-rendering:pixelated;border:1px solid #ddd}}</style>
<h1>RSCF demo report</h1><pre>{esc(format_summary(summary))}</pre>{''.join(items)}"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
