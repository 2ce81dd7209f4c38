"""Offline handler throughput per batch size: how much batching buys on this machine.

No Kafka, no runtime: one warm-up batch, then one timed `run_inference` per batch
size (repeated while under `min_seconds`), reporting requests/s, tokens or images
or audio seconds per second, and the speed-up over batch 1.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

_PROMPTS = {
    "text": [
        "Write one sentence about the sea.", "What is the capital of France?",
        "Give me a tip for learning to cook.", "Describe a sunset in a few words.",
        "Why is the sky blue? Answer briefly.", "Name three uses of a paperclip.",
    ],
    "image": ["a red circle", "a blue square", "a green triangle", "a yellow circle",
              "an orange square", "a purple triangle"],
    "speech": ["Welcome to the content pipeline.", "Your order has been shipped today.",
               "The weather will be sunny this afternoon.", "Please hold while we connect you."],
    "echo": ["hello world", "a prompt to echo back", "streaming all the way"],
}


@dataclass
class BenchRow:
    handler: str
    batch: int
    seconds: float
    requests_per_s: float
    units_per_s: float
    unit: str
    speedup_vs_1: float


def make_requests(kind: str, n: int, *, max_tokens: int = 32, steps: int = 50, size: int = 32) -> list[dict]:
    prompts = _PROMPTS[kind]
    out = []
    for i in range(n):
        params: dict[str, Any] = {"seed": i}
        if kind == "text":
            params.update(max_tokens=max_tokens, temperature=0.7, top_p=0.95)
        elif kind == "image":
            params.update(width=size, height=size, steps=steps)
        out.append({"request_id": f"bench-{kind}-{i}", "attempt": 0, "prompt": prompts[i % len(prompts)],
                    "params": params})
    return out


def _units(kind: str, outputs) -> tuple[float, str]:
    if kind == "text" or kind == "echo":
        return float(sum(o.tokens_out or 0 for o in outputs)), "tokens"
    if kind == "image":
        return float(len(outputs)), "images"
    from inference_workers.handlers.speech import wav_duration

    return float(sum(wav_duration(o.artifact) for o in outputs)), "audio_s"


def bench_handler(
    kind: str,
    handler,
    batches: list[int],
    min_seconds: float = 0.0,
    request_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    model = handler.load_model()
    kwargs = request_kwargs or {}
    handler.run_inference(make_requests(kind, 1, **kwargs), model)  # warm-up
    rows: list[BenchRow] = []
    base_rps = None
    for b in batches:
        requests = make_requests(kind, b, **kwargs)
        for r in requests:
            handler.validate(r)
        runs = 0
        units = 0.0
        unit = ""
        started = time.perf_counter()
        while True:
            outputs = handler.run_inference(requests, model)
            errors = [o.error for o in outputs if o.error]
            if errors or len(outputs) != b:
                raise RuntimeError(f"batch {b}: {len(outputs)} outputs, errors {errors[:3]}")
            u, unit = _units(kind, outputs)
            units += u
            runs += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        rps = b * runs / elapsed
        base_rps = base_rps or rps
        rows.append(BenchRow(kind, b, round(elapsed, 3), round(rps, 2), round(units / elapsed, 2), unit,
                             round(rps / base_rps, 2)))
        if log:
            log(f"{kind} batch {b}: {rps:.2f} req/s")
    return rows


def format_table(rows: list[BenchRow], describe: dict[str, Any]) -> str:
    head = f"{describe.get('handler')} {describe.get('model_name')}/{describe.get('model_version')} " \
           f"on {describe.get('device')} ({describe.get('dtype')})"
    lines = [head, f"{'batch':>5} {'seconds':>8} {'req/s':>10} {'units/s':>11} {'unit':<8} {'vs b=1':>6}"]
    for r in rows:
        lines.append(f"{r.batch:>5} {r.seconds:>8.2f} {r.requests_per_s:>10.2f} {r.units_per_s:>11.2f} "
                     f"{r.unit:<8} {r.speedup_vs_1:>5.2f}x")
    return "\n".join(lines)


def rows_as_dicts(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
