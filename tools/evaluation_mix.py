"""The evaluation's request mix: which kind of request the i-th one is, from which tenant, to which pool.

Two mixes, the same for every deployment:
- `echo`: every request to the echo pool (a simulated model cost, RSCF_ECHO_BATCH_MS/ITEM_MS), so the
  run measures the architecture and nothing else;
- `real`: in every ten requests one SmolLM2 text (text-small), one shapes image (a PNG artifact in
  object storage), one Piper speech and seven echo: the project's real CPU models, at a rate the 2
  cores carry (text-small answers ~0.7 req/s at batch 1, FACTS/README).
One request in seven comes from a PREMIUM tenant at priority HIGH, whatever its kind, so premium
latency is measured on every kind. Short prompts: the router's complexity estimate (0.04) keeps PREMIUM
text on text-small (its text-large threshold is 0.25), so the mix needs no text-large replica.
"""

from __future__ import annotations

from rscf.pools import ECHO, IMAGE, SPEECH, TEXT_SMALL
from tools import harness

MIXES = ("echo", "real")
PREMIUM_EVERY = 7
# kind -> (pool, modality, prompt); echo-kind requests go to the echo pool through the tenant's `echo` feature
KINDS = {
    "echo": (ECHO, "TEXT", "describe product {i} in one line"),
    "text": (TEXT_SMALL, "TEXT", "Write one sentence about product {i}."),
    "image": (IMAGE, "IMAGE", "a red circle on a blue background, variant {i}"),
    "speech": (SPEECH, "AUDIO", "Your order {i} has shipped."),
}
REAL_CYCLE = ("echo", "text", "echo", "image", "echo", "echo", "speech", "echo", "echo", "echo")
# tenant -> (tier, features): echo tenants carry the `echo` feature, real ones route by modality
TENANTS = {
    "eval-std": ("STANDARD", ["echo"]), "eval-prem": ("PREMIUM", ["echo"]),
    "eval-real": ("STANDARD", []), "eval-prem-real": ("PREMIUM", []),
}


def kind_of(i: int, mix: str) -> str:
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r} (known: {', '.join(MIXES)})")
    return "echo" if mix == "echo" else REAL_CYCLE[i % len(REAL_CYCLE)]


def is_premium(i: int) -> bool:
    return i % PREMIUM_EVERY == 0


def tenant_of(i: int, mix: str) -> str:
    real = kind_of(i, mix) != "echo"
    if is_premium(i):
        return "eval-prem-real" if real else "eval-prem"
    return "eval-real" if real else "eval-std"


def pools(mix: str) -> list[str]:
    """The pools a deployment must run for this mix (echo first: the outage scenario kills its model)."""
    kinds = {kind_of(i, mix) for i in range(len(REAL_CYCLE))}
    return [KINDS[k][0] for k in KINDS if k in kinds]


def policies() -> list[dict]:
    """The tenants' policies, the control event's `tenant_policy` fields: quotas out of the way."""
    return [{"tenant_id": t, "tier": tier, "rate_per_s": 100_000.0, "burst": 100_000, "features": list(features)}
            for t, (tier, features) in TENANTS.items()]


def prompt_record(i: int, run_id: str, mix: str = "echo") -> dict:
    kind = kind_of(i, mix)
    _pool, modality, text = KINDS[kind]
    return harness.prompt(f"{run_id}-{i}", tenant_of(i, mix), text.format(i=i), modality=modality,
                          priority="HIGH" if is_premium(i) else "NORMAL")
