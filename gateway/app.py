"""The gateway's HTTP API (FastAPI): prompts in, each tenant's own finals and artifacts out.

Every data endpoint takes the tenant from the credential (`gateway.auth`), applies the
caller key's rate limit, and only ever looks in that tenant's finals; errors are
``{"error": code, "detail": text}`` with no credential or other tenant's data in them.
OpenAPI: ``/openapi.json`` (and ``/docs``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPBearer

from gateway.auth import AuthError, Authenticator, Principal
from gateway.edge import Accepted, EdgeError, PromptIn, check_request_id, describe_invalid
from gateway.finals import FinalsCache, Subscriber
from gateway.limits import BodyLimit
from gateway.ratelimit import RateLimiter, retry_after_header
from gateway.runtime import Runtime
from gateway.submit import SubmitRoute
from schemas.keys import tenant_object_prefix

log = logging.getLogger("rscf.gateway")
_bearer = HTTPBearer(auto_error=False, description="an API key (rscf_...) or an access token from /v1/oauth/token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


_PUBLIC = ("/healthz", "/.well-known/jwks.json", "/v1/oauth/token")


class RateLimited(Exception):
    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s


def _json_safe(record: dict) -> dict:
    return json.loads(json.dumps(record, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


def _error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def create_app(rt: Runtime) -> SubmitRoute:
    app = FastAPI(title="RSCF gateway", version="1.0",
                  description="Submit prompts, read your tenant's results and artifacts. Issue #16.")
    app.add_middleware(BodyLimit, max_bytes=rt.max_body_bytes)
    auth = Authenticator(rt.keys, rt.tokens)
    limiter = RateLimiter(rt.rate_per_s, rt.burst)
    cache: FinalsCache = rt.cache
    app.state.runtime = rt

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError):
        log.info("denied %s %s: %s", request.method, request.url.path, exc.code)
        headers = {"WWW-Authenticate": f'Bearer error="{exc.code}"'} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.detail, headers)

    @app.exception_handler(EdgeError)
    async def _edge_error(request: Request, exc: EdgeError):
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(RateLimited)
    async def _limited(request: Request, exc: RateLimited):
        return _error(429, "rate_limited", "too many requests for this API key",
                      {"Retry-After": retry_after_header(exc.wait_s)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        if request.url.path not in _PUBLIC:  # FastAPI reads the body before dependencies: credentials first
            try:
                auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
            except AuthError as auth_exc:
                return await _auth_error(request, auth_exc)
        return _error(*describe_invalid(exc.errors()))

    async def caller(request: Request, _b: Any = Depends(_bearer), _k: Any = Depends(_api_key)) -> Principal:
        principal = auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
        wait = limiter.take(principal.key_id)
        if wait:
            raise RateLimited(wait)
        return principal

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict:
        return {"status": "ok", "finals_reader": rt.reader.assigned.is_set() if rt.reader else False,
                "finals_seen": cache.count}

    @app.get("/.well-known/jwks.json", tags=["identity"])
    async def jwks() -> dict:
        return rt.tokens.jwks()

    @app.post("/v1/oauth/token", tags=["identity"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["grant_type"], "properties": {
            "grant_type": {"type": "string", "enum": ["client_credentials"]},
            "client_id": {"type": "string"}, "client_secret": {"type": "string"}}}}}}})
    async def token(request: Request) -> dict:
        """OAuth2 client credentials (RFC 6749 §4.4): client id = key id, secret = the key's secret or the whole
        key; in the form or as HTTP Basic."""
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise EdgeError(400, "invalid_request", "send application/x-www-form-urlencoded")
        try:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8"), strict_parsing=False).items()}
        except UnicodeDecodeError:
            raise EdgeError(400, "invalid_request", "the form is not UTF-8") from None
        if form.get("grant_type") != "client_credentials":
            raise EdgeError(400, "unsupported_grant_type", "only client_credentials is supported")
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            import base64
            import binascii

            try:
                client_id, _, client_secret = base64.b64decode(basic[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError(401, "invalid_client", "malformed Basic credentials") from None
        access, ttl, principal = auth.client_credentials(client_id, client_secret)
        wait = limiter.take(principal.key_id)
        if wait:
            raise RateLimited(wait)
        return {"access_token": access, "token_type": "Bearer", "expires_in": ttl}

    @app.post("/v1/prompts", status_code=202, response_model=Accepted, tags=["prompts"])
    async def submit(body: PromptIn, who: Principal = Depends(caller)) -> Accepted:
        """Validate (the job's own checks), then produce to the prompts topic keyed by the caller's tenant;
        202 once the broker has it. Declared here for OpenAPI; answered by `gateway.submit.SubmitRoute`."""
        raise RuntimeError("POST /v1/prompts is answered by gateway.submit.SubmitRoute in front of this app")

    @app.get("/v1/results/{request_id}", tags=["results"])
    async def result(request_id: str, wait: float = Query(0, ge=0, le=30, description="long-poll seconds"),
                     who: Principal = Depends(caller)) -> dict:
        """The caller's final for this request id; 404 for unknown ids and other tenants' ids alike."""
        check_request_id(request_id)
        record = cache.get(who.tenant, request_id)
        if record is None and wait > 0:
            record = await _wait_for(cache, who.tenant, request_id, wait)
        if record is None:
            raise EdgeError(404, "not_found", "no final result for this request id (yet)")
        return _json_safe(record)

    @app.get("/v1/stream", tags=["results"], response_class=StreamingResponse)
    async def stream(replay: int = Query(0, ge=0, le=1000), who: Principal = Depends(caller)):
        """Server-sent events: the caller's finals as they arrive (``replay`` recent ones first)."""
        sub = Subscriber(asyncio.get_running_loop())
        cache.subscribe(who.tenant, sub)
        backlog = cache.recent(who.tenant, replay) if replay else []

        async def events():
            try:
                for rec in backlog:
                    yield f"event: final\ndata: {json.dumps(_json_safe(rec))}\n\n"
                while True:
                    try:
                        rec = await asyncio.wait_for(sub.queue.get(), 15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if rec is None:
                        yield "event: overflow\ndata: {}\n\n"
                        return
                    yield f"event: final\ndata: {json.dumps(_json_safe(rec))}\n\n"
            finally:
                cache.unsubscribe(who.tenant, sub)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/v1/results/{request_id}/artifacts/{index}", tags=["results"])
    async def artifact(request_id: str, index: int, who: Principal = Depends(caller)) -> dict:
        """A presigned GET URL (expiring) for one artifact of the caller's own final."""
        check_request_id(request_id)
        record = cache.get(who.tenant, request_id)
        uris = (record or {}).get("artifact_uris") or []
        if record is None or not 0 <= index < len(uris):
            raise EdgeError(404, "not_found", "no such artifact for this request id")
        bucket, _, key = str(uris[index]).removeprefix("s3://").partition("/")
        if bucket != rt.artifacts_bucket or not key.startswith(tenant_object_prefix(who.tenant)) \
                or ".." in key.split("/"):
            log.warning("artifact of key %s outside its tenant prefix refused", who.key_id)
            raise EdgeError(404, "not_found", "no such artifact for this request id")
        url = rt.presign(bucket, key, timedelta(seconds=rt.presign_ttl_s))
        return {"url": url, "expires_in": rt.presign_ttl_s, "expires_at": int(time.time()) + rt.presign_ttl_s}

    from gateway.control import register_control

    register_control(app, rt, caller)
    return SubmitRoute(app, rt, auth, limiter)


async def _wait_for(cache: FinalsCache, tenant: str, request_id: str, wait_s: float) -> dict | None:
    sub = Subscriber(asyncio.get_running_loop())
    cache.subscribe(tenant, sub)
    try:
        deadline = time.monotonic() + wait_s
        record = cache.get(tenant, request_id)  # it may have landed between the first look and subscribing
        while record is None and (left := deadline - time.monotonic()) > 0:
            try:
                rec = await asyncio.wait_for(sub.queue.get(), left)
            except asyncio.TimeoutError:
                break
            if rec is not None and rec.get("request_id") == request_id:
                record = rec
        return record
    finally:
        cache.unsubscribe(tenant, sub)
