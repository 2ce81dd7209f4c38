"""A realistic prompt mix for `rscf bench pipeline --features ...`: some prompts repeat, most do not.

Why: an embedding cache is only worth what the traffic repeats. The mix (issue #14): a share
`repeat_share` (default 0.3) of prompts drawn from 60 popular ones (questions about the
knowledge base's products, short everyday requests, a few unsafe lines from the moderation
set), the rest unique (a customer number and a question assembled from parts, so no two are
equal). The hit rate a run reports is that of this mix, stated with it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "operators" / "data"

ASKS = ("how do I", "can you explain how to", "what is the best way to", "is it possible to",
        "please tell me how to", "I would like to know how to")
ACTIONS = ("reset", "update", "clean", "pair", "return", "set up", "dim", "schedule", "descale", "repair")
OBJECTS = ("my Halo lamp", "the air purifier", "the kettle", "my smart plug", "the hub", "the filter",
           "the night light", "my order", "the warranty claim", "the mobile app")
TAILS = ("", " after a power cut", " without the app", " when it blinks red", " before my holiday",
         " for my parents", " in a small flat", " with Bluetooth only")


def popular_prompts(n: int = 60) -> list[str]:
    """Questions about the knowledge base's topics, everyday requests and a few unsafe lines."""
    out: list[str] = []
    with open(DATA / "knowledge_base.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(f"What should I know about {json.loads(line)['title']}?")
    unsafe = []
    with open(DATA / "moderation_examples.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                (out if row["label"] == "safe" else unsafe).append(row["text"])
    rng = random.Random(7)
    popular = out[: n - 3] + rng.sample(unsafe, 3)
    return popular[:n]


def prompt_mix(n: int, repeat_share: float = 0.3, seed: int = 0, salt: str = "") -> list[str]:
    """`n` prompt texts: `repeat_share` of them from the popular set, the others unique.

    `salt` goes into every unique prompt: a benchmark passes its run's id, so its unique prompts are
    new to the embedding service's cache too (a run that reused an earlier run's texts measured
    0 model work per prompt)."""
    if not 0.0 <= repeat_share <= 1.0:
        raise ValueError("repeat_share must be within 0..1")
    rng = random.Random(seed)
    popular = popular_prompts()
    texts = []
    for i in range(n):
        if rng.random() < repeat_share:
            texts.append(rng.choice(popular))
        else:
            texts.append(f"Customer {salt}{i}: {rng.choice(ASKS)} {rng.choice(ACTIONS)} {rng.choice(OBJECTS)}"
                         f"{rng.choice(TAILS)}?")
    return texts
