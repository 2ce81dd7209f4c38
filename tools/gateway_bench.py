"""`rscf bench gateway`: latency the HTTP gateway adds over producing to Kafka directly, same run.

Both arms offer the same prompts open-loop at `rate` per second for `duration_s` and time each
one from its scheduled send (so queueing counts: no coordinated omission) to its
acknowledgement:
- direct: `gateway.sender.Sender` (the gateway's own producer: idempotent, acks=all) in this
  process, awaiting each delivery report;
- gateway: HTTPS POST /v1/prompts (TLS verified against the local CA, API key auth, edge
  validation, Avro encode, produce, await delivery, 202) to a gateway process started here on
  a private port and private topic, over keep-alive connections of a minimal asyncio
  HTTP/1.1 client (~40 µs of client CPU per request, so the client does not dominate 2 cores).
Added latency = gateway percentile - direct percentile.

Each timed round starts after an untimed half second of the same arm: the other arm's round left the
keep-alive connections idle past uvicorn's 5 s, and re-opening 64 TLS connections at once (~1 ms of
CPU on each side per handshake) queued the first ~90 requests up to 61 ms, a burst no steady client
sees. The client's cyclic collector is paused while a round is timed (`client_gc_paused`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from rscf.kafka_clients import GATEWAY, client_security, credentials_env
from rscf.settings import SETTINGS


ROUND_WARMUP_S = 0.5


@contextmanager
def client_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection in the benchmark client while an arm is timed. Traced on 2026-12-05:
    the client's own full collections (10,000 pending tasks: 34-48 ms each, every ~12 s) stalled its
    loop, and the requests queued behind them were the slowest of either arm (up to 69 ms), i.e. the
    instrument, not the gateway. Collected once before, and again after, each timed round."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(lat_s: list[float], errors: int, offered: int, wall_s: float) -> dict[str, Any]:
    ms = [v * 1000 for v in lat_s]
    return {"ok": len(ms), "errors": errors, "offered": offered, "achieved_per_s": round(len(ms) / wall_s, 1),
            "p50_ms": round(_pct(ms, 0.50), 3), "p90_ms": round(_pct(ms, 0.90), 3),
            "p99_ms": round(_pct(ms, 0.99), 3), "max_ms": round(max(ms), 3) if ms else None,
            "mean_ms": round(statistics.fmean(ms), 3) if ms else None}


async def open_loop(rate: float, duration_s: float, call: Callable[[int], Awaitable[bool]]) -> dict[str, Any]:
    """Fire `call(i)` at a fixed rate; latency from each scheduled time to its completion."""
    lat: list[float] = []
    errors = 0
    n = int(rate * duration_s)
    t0 = time.perf_counter() + 0.05

    pending = 0
    done = asyncio.Event()

    async def one(i: int, at: float) -> None:
        nonlocal errors, pending
        try:
            ok = await call(i)
            if ok:
                lat.append(time.perf_counter() - at)
            else:
                errors += 1
        finally:
            pending -= 1
            if pending == 0 and sent == n:
                done.set()

    tasks = set()  # strong references until done; no gather over all n at the end (~15 ms on the loop)
    sent = 0
    for i in range(n):
        at = t0 + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending += 1
        sent += 1
        task = asyncio.ensure_future(one(i, at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if pending:
        await done.wait()
    return summary(lat, errors, n, time.perf_counter() - t0)


class HttpPool:
    """At most `size` keep-alive HTTPS connections to one host, one request at a time on each; a request
    that finds none free waits for one (its latency still counts from its scheduled time). Without the cap
    a slow moment makes the client open new connections, and their TLS handshakes (~1 ms of CPU on each
    side) slow both further. A connection idle longer than `max_idle_s` (under uvicorn's 5 s keep-alive)
    is closed rather than reused: the server may have closed it, and a request on it would fail unsent."""

    def __init__(self, port: int, ca: Path | None, size: int = 64, max_idle_s: float = 4.0) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.size = size
        self.slots = asyncio.Semaphore(size)
        self.max_idle_s = max_idle_s
        self.status: dict[int, int] = {}

    async def _conn(self):
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < self.max_idle_s:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(SETTINGS.host, self.port, ssl=self.ctx,
                                             server_hostname=SETTINGS.host if self.ctx else None)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        async with self.slots:
            return await self._post(path, body, headers)

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        reader, writer = await self._conn()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {SETTINGS.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next((int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:")), 0)
        if length:
            await reader.readexactly(length)
        self.status[status] = self.status.get(status, 0) + 1
        self.idle.append((reader, writer, time.monotonic()))
        return status


def start_gateway(data_dir: Path, port: int, prompts_topic: str, plain: bool = False,
                  content_topic: str | None = None, rate_per_s: int = 1_000_000) -> subprocess.Popen:
    """A gateway process of its own (private data dir and port) as the stack's gateway principal, whose
    Kafka ACLs cover ``genai.prompts.*`` / ``genai.content.*`` topics; the S3 key is passed on, not
    regenerated."""
    env = {**os.environ, "RSCF_DATA_DIR": str(data_dir), "RSCF_GATEWAY_PORT": str(port),
           "RSCF_GATEWAY_RATE_PER_S": str(rate_per_s), "RSCF_GATEWAY_BURST": str(rate_per_s),
           "RSCF_S3_SECRET_KEY": SETTINGS.s3.secret_key, **credentials_env(GATEWAY),
           "RSCF_GATEWAY_LOG_LEVEL": "warning", "PYTHONPATH": str(SETTINGS.paths.repo)}
    argv = [sys.executable, "-m", "gateway.server", "--port", str(port), "--prompts-topic", prompts_topic,
            "--content-topic", content_topic or prompts_topic + ".finals"] + (["--plain-http"] if plain else [])
    log = open(data_dir / "gateway.log", "wb")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(port: int, ca: Path | None, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    import httpx

    scheme = "https" if ca else "http"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            if httpx.get(f"{scheme}://{SETTINGS.host}:{port}/healthz", verify=str(ca) if ca else False,
                         timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("gateway not healthy in time")


def run(rate: float = 1000, duration_s: float = 10, warmup_s: float = 2, plain: bool = False,
        port: int | None = None) -> dict[str, Any]:
    from gateway.apikeys import KeyStore
    from gateway.sender import Sender
    from rscf.kafka_clients import create_topics
    from schemas.prompt_input import prompt_request
    from schemas.serde import TopicSerde
    from tools.harness import free_port

    topic = f"{SETTINGS.topics.prompts}.bench.{uuid.uuid4().hex[:8]}"  # within the gateway principal's ACLs
    finals = f"{SETTINGS.topics.content}.bench.{uuid.uuid4().hex[:8]}"
    create_topics([topic, finals], partitions=SETTINGS.topics.partitions)
    serde = TopicSerde(topic, schema_name="prompt_request")  # registers the subject for the gateway too
    serde.writer_id
    data_dir = Path(tempfile.mkdtemp(prefix="rscf-gwbench-"))
    _, key = KeyStore(data_dir / "secrets").create("bench")
    port = port or free_port()
    proc = start_gateway(data_dir, port, topic, plain, content_topic=finals)
    try:
        from gateway.tls import ensure_tls

        ca = None if plain else ensure_tls(data_dir / "secrets").ca_cert
        wait_healthy(port, ca, proc)
        body = json.dumps({"prompt": "Write a haiku about stream processing", "modality": "text",
                           "params": {"max_tokens": 32}}).encode()
        record = prompt_request({"tenant_id": "bench", "prompt": "Write a haiku about stream processing",
                                 "modality": "text", "params": {"max_tokens": 32}})
        value = serde.encode(record)

        async def arms() -> dict[str, Any]:
            sender = Sender(SETTINGS.kafka_bootstrap)
            pool = HttpPool(port, ca)
            headers = {"Authorization": f"Bearer {key}"}

            async def direct(i: int) -> bool:
                try:
                    await sender.send(topic, b"bench", value)
                    return True
                except Exception:  # noqa: BLE001 - counted as an error
                    return False

            async def via_gateway(i: int) -> bool:
                try:
                    return await pool.post("/v1/prompts", body, headers) == 202
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    return False

            await open_loop(rate, warmup_s, direct)
            await open_loop(rate, warmup_s, via_gateway)
            out = {}
            # two rounds each, interleaved, so a load change on the shared machine hits both arms
            rounds: dict[str, list[dict]] = {"direct": [], "gateway": []}
            for _ in range(2):
                for arm, call in (("direct", direct), ("gateway", via_gateway)):
                    await open_loop(rate, ROUND_WARMUP_S, call)  # the other arm's round let connections idle out
                    with client_gc_paused():
                        rounds[arm].append(await open_loop(rate, duration_s / 2, call))
            sender.close()
            for arm, results in rounds.items():
                out[arm] = {"rounds": results, "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 3),
                            "p99_ms": round(max(r["p99_ms"] for r in results), 3),
                            "errors": sum(r["errors"] for r in results)}
            out["http_status"] = pool.status
            return out

        import psutil

        gw_cpu0 = psutil.Process(proc.pid).cpu_times()
        out = asyncio.run(arms())
        gw_cpu1 = psutil.Process(proc.pid).cpu_times()
        gw_cpu_s = (gw_cpu1.user + gw_cpu1.system) - (gw_cpu0.user + gw_cpu0.system)
        total_gw = int(rate * (duration_s / 2 * 2 + warmup_s))
        added = {"p50_ms": round(out["gateway"]["p50_ms"] - out["direct"]["p50_ms"], 3),
                 "p99_ms": round(out["gateway"]["p99_ms"] - out["direct"]["p99_ms"], 3)}
        return {"rate_per_s": rate, "duration_s": duration_s, "tls": not plain, "direct": out["direct"],
                "gateway": out["gateway"], "added": added, "http_status": out["http_status"],
                "gateway_cpu_us_per_request": round(gw_cpu_s / max(1, total_gw) * 1e6, 1),
                "target": {"p50_ms": 2.0, "p99_ms": 10.0},
                "met": added["p50_ms"] <= 2.0 and added["p99_ms"] <= 10.0,
                "load": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security()}).delete_topics([topic, finals])
