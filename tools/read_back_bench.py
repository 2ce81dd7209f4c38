"""What the exactly-once read-back costs a restore: `python -m tools.read_back_bench [N]`.

Writes N finals with identity headers (default 300,000: 5 minutes of content and audit records at
500 prompts/s, in one topic of 3 partitions) to a scratch topic on the stack's broker, then times
`jobs.replay_filter.read_written` over it and deletes the topic. Prints records, wall and CPU seconds.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import uuid

from jobs.replay_filter import IDENTITY_HEADER, read_written
from rscf import kafka_clients
from rscf.settings import SETTINGS


def run(n: int = 300_000) -> dict:
    from confluent_kafka import Producer

    topic = f"{SETTINGS.topics.content}.read-back-bench-{uuid.uuid4().hex[:6]}"
    kafka_clients.create_topics([topic], 3)
    try:
        p = Producer(kafka_clients.producer_config(linger_ms=50))
        for i in range(n):
            while True:
                try:
                    p.produce(topic, b"x" * 200, key=f"tenant\x1freq-{i}".encode(),
                              headers=[(IDENTITY_HEADER, f"content/0@0:{i}".encode())])
                    break
                except BufferError:
                    p.poll(0.1)
        p.flush(60)
        config = kafka_clients.client_config(kafka_clients.JOB, **{"group.id": "rscf-read-back-bench"})
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        written = read_written(config, [topic], int(time.time() * 1000) - SETTINGS.limits.final_readback_ms,
                               timeout_s=120)
        wall, r1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF)
        return {"records": sum(written.values()), "wall_s": round(wall, 2),
                "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2)}
    finally:
        kafka_clients.delete_topics([topic])


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000)))
