"""What `rscf bench burst` changes per pool: the load scaled to what one replica serves, the worker's
arguments, and the requests (pure logic; tools/burst_bench.py runs them).

echo: 20 ms of simulated model time at batches of 1 = 50 requests/s per replica; steady 20/s NORMAL+LOW
(40 % of one replica), 10x burst (200/s, 4 replicas' worth), HIGH 2/s.
image: the real shapes DDPM (32x32, 50 steps, one torch thread) serves ~2.9 images/s per replica at
batch 1 and 4.1 at batch 8 (README handler figures); batches of 1 keep a HIGH request's wait behind the
image in flight to one image (~0.35 s) instead of a batch of 8 (~2 s), the lanes' point. Steady 1/s
NORMAL+LOW plus 0.5/s HIGH (~50 % of one replica), 10x burst (10/s, ~3.5 replicas' worth: a backlog
builds even at the 2 replicas a 2-core machine holds), lag threshold 5 (~2 s of one replica's work).
"""

from __future__ import annotations

from typing import Any

BURST_POOLS = ("echo", "image")
SHAPES = ("circle", "square", "triangle")  # inference_workers/models/shapes_unet.py's vocabulary
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")

# Plan fields per pool; anything given on the command line wins.
POOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "echo": dict(steady_rate=20.0, burst_factor=10.0, high_rate=2.0, before_s=15.0, burst_s=10.0, after_s=25.0,
                 item_ms=20.0, max_replicas=4, lag_threshold=50, drain_timeout_s=90.0, max_batch=1),
    "image": dict(steady_rate=1.0, burst_factor=10.0, high_rate=0.5, before_s=20.0, burst_s=10.0, after_s=30.0,
                  item_ms=345.0, max_replicas=2, lag_threshold=5, drain_timeout_s=180.0, max_batch=1,
                  image_steps=50),
}


def pool_defaults(pool: str, **given: Any) -> dict[str, Any]:
    """The pool's defaults with every given (not None) value on top; an unknown pool is an error."""
    if pool not in POOL_DEFAULTS:
        raise ValueError(f"unknown burst pool {pool!r} (one of {', '.join(BURST_POOLS)})")
    return {**POOL_DEFAULTS[pool], **{k: v for k, v in given.items() if v is not None}}


def replica_rps(item_ms: float) -> float:
    """Requests/s one replica serves (the predictive controller turns a forecast into replicas with it):
    echo's item_ms is its simulated time per request; image's is one image at batch 1 (~2.9/s)."""
    if item_ms <= 0:
        raise ValueError("item_ms must be > 0")
    return 1000.0 / item_ms


def worker_args(pool: str, item_ms: float, max_batch: int) -> list[str]:
    """`rscf worker run` arguments the controller passes to each replica (besides topics and group)."""
    args = ["--max-batch", str(max_batch)]
    if pool == "echo":
        args = ["--echo-latency-ms", str(item_ms), *args]
    return args


def image_prompt(i: int) -> str:
    """Cycles through every (colour, shape) class the shapes model was trained on: 'a red circle', ..."""
    return f"a {COLOURS[(i // len(SHAPES)) % len(COLOURS)]} {SHAPES[i % len(SHAPES)]}"


def build_request(pool: str, i: int, run: str, rid: str, priority: str, now_ms: int,
                  image_steps: int = 50) -> dict:
    """One InferenceRequest for the pool, on a priority lane, 10 minutes to its deadline."""
    from tools.workers_bench import make_request

    r = make_request(pool, i, run, now_ms)
    if pool == "image":
        r["prompt"] = image_prompt(i)
        r["params"] = {**r["params"], "width": 32, "height": 32, "steps": image_steps}
    r.update(request_id=rid, priority=priority, attempt=1, deadline=now_ms + 600_000)
    return r
