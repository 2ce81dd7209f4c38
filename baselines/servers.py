"""The two baselines of `rscf evaluate` as HTTP servers (Starlette on uvicorn, bound to 127.0.0.1).

- monolith: one process does everything per request, synchronously: the job's steps
  (`baselines.flow`) and the model in-process behind a dynamic batcher (`baselines.model_host`).
  Concurrency limit: `--threads` requests in flight (64: enough to fill a batch of every pool
  while a model runs; more only queues in memory).
- model-service: one pool's model behind the same batcher, `POST /v1/infer` (one process per
  modality, fixed replicas: the "partially containerised" deployment).
- front: the job's steps, calling the model services over HTTP synchronously; a failed call is an
  error result and the job's own retry policy (back-off, attempts, fallback pools) applies.

`POST /v1/generate` takes a prompt record as JSON (the Avro contract's fields, timestamps in epoch
ms) and answers 200 with the final ContentResult, or 422 with the reason an undecodable prompt
would get as a dead letter.

    python -m baselines.servers monolith --port 18100 --pools echo
    python -m baselines.servers model-service --pool echo --port 18101
    python -m baselines.servers front --port 18102 --service echo=http://127.0.0.1:18101
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from typing import Any, Callable

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from baselines.flow import CallModel, InProcessFlow, ModelUnavailable
from baselines.model_host import ModelHost
from rscf.clock import now_ms
from rscf.settings import SETTINGS

log = logging.getLogger("rscf.baselines")


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status_code=status, media_type="application/json")


def generate_app(flow: InProcessFlow, call_model: CallModel) -> Starlette:
    async def generate(request: Request) -> Response:
        try:
            record = await request.json()
        except ValueError:
            return _json({"error": "malformed JSON"}, 400)
        if not isinstance(record, dict):
            return _json({"error": "a prompt record is a JSON object"}, 400)
        answer = await run_in_threadpool(flow.run, record, call_model)
        if answer.content is None:
            return _json({"status": "DEAD_LETTER", "reason": answer.dead_letter}, 422)
        return _json(answer.content)

    return Starlette(routes=[Route("/v1/generate", generate, methods=["POST"]), Route("/healthz", _ok)])


def model_service_app(host: ModelHost) -> Starlette:
    async def infer(request: Request) -> Response:
        body = await request.json()
        left_s = max(0.001, (int(body.get("deadline") or now_ms() + 30_000) - now_ms()) / 1000.0)
        try:
            return _json(await run_in_threadpool(host.infer, body, left_s))
        except TimeoutError:
            return _json({"error": "deadline passed in the model queue"}, 504)

    return Starlette(routes=[Route("/v1/infer", infer, methods=["POST"]), Route("/healthz", _ok)])


async def _ok(_request: Request) -> Response:
    return JSONResponse({"ok": True})


def in_process(hosts: dict[str, ModelHost]) -> CallModel:
    def call(request: dict, timeout_s: float) -> dict:
        host = hosts.get(str(request.get("pool")))
        if host is None:
            raise ModelUnavailable(f"no model for pool {request.get('pool')!r} in this process")
        return host.infer(request, timeout_s)
    return call


def over_http(services: dict[str, str], max_connections: int) -> CallModel:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    clients = {pool: httpx.Client(base_url=url, limits=limits) for pool, url in services.items()}

    def call(request: dict, timeout_s: float) -> dict:
        client = clients.get(str(request.get("pool")))
        if client is None:
            raise ModelUnavailable(f"no model service for pool {request.get('pool')!r}")
        try:
            r = client.post("/v1/infer", content=json.dumps(request, default=str), timeout=timeout_s,
                            headers={"content-type": "application/json"})
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from exc
        except httpx.TransportError as exc:
            raise ModelUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if r.status_code == 504:
            raise TimeoutError("model service: deadline passed in its queue")
        r.raise_for_status()
        return r.json()
    return call


def load_host(pool: str) -> ModelHost:
    from inference_workers.models import load_handler

    return ModelHost(pool, load_handler(pool))


def serve(app: Starlette, port: int, threads: int) -> None:
    import anyio.to_thread
    import uvicorn

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads  # the concurrency limit
        yield

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host=SETTINGS.host, port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baselines.servers", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    m = sub.add_parser("monolith")
    m.add_argument("--pools", default="echo", help="comma-separated pools whose models run in this process")
    s = sub.add_parser("model-service")
    s.add_argument("--pool", required=True)
    f = sub.add_parser("front")
    f.add_argument("--service", action="append", default=[], help="POOL=URL of its model service")
    for q in (m, s, f):
        q.add_argument("--port", type=int, required=True)
        q.add_argument("--threads", type=int, default=64, help="requests in flight (the concurrency limit)")
    for q in (m, f):
        q.add_argument("--policies", default="[]",
                       help="JSON list of tenant policies (the control event's tenant_policy fields)")
    args = p.parse_args(argv)
    policies = {}
    if args.role != "model-service":
        from operators.admit import policy_from_dict

        policies = {d["tenant_id"]: policy_from_dict(d) for d in json.loads(args.policies)}
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    build: dict[str, Callable[[], Starlette]] = {
        "monolith": lambda: generate_app(InProcessFlow(policies), in_process(
            {pool: load_host(pool) for pool in args.pools.split(",") if pool})),
        "model-service": lambda: model_service_app(load_host(args.pool)),
        "front": lambda: generate_app(InProcessFlow(policies), over_http(
            dict(item.split("=", 1) for item in args.service), args.threads)),
    }
    serve(build[args.role](), args.port, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
