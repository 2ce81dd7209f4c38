"""The control plane behind the gateway: only operator/admin keys may post control events.

A tenant's key gets 403 here, so a tenant cannot force breakers open or rewrite quotas and
rollouts through the gateway. (Kafka itself still accepts any writer until the broker gets
SASL and ACLs: issue #16 item 3, not done yet.)
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Optional

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict

from gateway.auth import Principal, require_operator
from gateway.edge import EdgeError
from schemas.prompt_input import now_utc_ms


class ControlIn(BaseModel):
    """One of rollout / tenant_policy / breaker, as in schemas/control_event.avsc."""

    model_config = ConfigDict(extra="forbid")
    rollout: Optional[dict[str, Any]] = None
    tenant_policy: Optional[dict[str, Any]] = None
    breaker: Optional[dict[str, Any]] = None


def register_control(app: FastAPI, rt: Any, caller: Callable[..., Principal]) -> None:
    @app.post("/v1/control", status_code=202, tags=["control"])
    async def control(body: ControlIn, who: Principal = Depends(caller)) -> dict:
        """Operators only: produce a control event (policies, rollouts, breaker commands)."""
        require_operator(who)
        parts = [k for k in ("rollout", "tenant_policy", "breaker") if getattr(body, k) is not None]
        if len(parts) != 1:
            raise EdgeError(422, "invalid_control_event", "give exactly one of rollout, tenant_policy, breaker")
        event = {"event_id": str(uuid.uuid4()), "issued_at": now_utc_ms(), "rollout": None, "tenant_policy": None,
                 "breaker": None, parts[0]: getattr(body, parts[0])}
        try:
            value = rt.control_serde.encode(event)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EdgeError(422, "invalid_control_event", f"does not fit ControlEvent: {type(exc).__name__}") from None
        await rt.sender.send(rt.control_topic, event["event_id"].encode(), value)
        return {"event_id": event["event_id"], "kind": parts[0]}
