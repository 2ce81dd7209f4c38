"""`rscf kb ...`: manage the retrieval knowledge base in the Redis vector set."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent


def register(subparsers) -> None:
    kb = subparsers.add_parser("kb", help="retrieval knowledge base (Redis vector set)")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    ingest = kb_sub.add_parser(
        "ingest", parents=[json_parent()], help="chunk, embed and index passages from .jsonl / text files"
    )
    ingest.add_argument("files", nargs="+", metavar="FILE")
    ingest.add_argument("--redis-url", default=None,
                        help="default: the stack's Redis as the operator user (rscf credentials redis operator)")
    ingest.add_argument("--key", default=None, help="vector set key (default rscf:kb)")
    ingest.add_argument("--replace", action="store_true", help="drop the existing vector set first")
    ingest.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    import redis
    from tqdm import tqdm

    from operators.embedding_onnx import default_embedder
    from operators.enrich import ingest_knowledge_base, read_passages
    from operators.vector_index import KB_KEY, RedisVectorSetIndex

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        total = sum(1 for _ in read_passages(args.files))
    except (ValueError, KeyError) as exc:
        print(f"bad input: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from rscf import redis_security

    try:
        url = args.redis_url or redis_security.url(redis_security.OPERATOR)
    except redis_security.RedisAuthError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"redis not reachable at {redis_security.redact(url)}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    index = RedisVectorSetIndex(client, key=args.key or KB_KEY)
    if args.replace:
        index.clear()

    started = time.perf_counter()
    try:
        with tqdm(total=total, unit="passage", disable=args.json, file=sys.stderr) as bar:
            count = ingest_knowledge_base(args.files, default_embedder(), index, progress=bar.update)
    except redis.ResponseError as exc:
        print(f"redis refused the vector set commands (Redis >= 8 needed): {exc}", file=sys.stderr)
        return EXIT_FAILED
    elapsed = time.perf_counter() - started
    summary = {"ingested": count, "key": index.key, "indexed_total": index.count(), "seconds": round(elapsed, 2)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"ingested {count} passages into {index.key} ({summary['indexed_total']} indexed) in {elapsed:.1f}s")
    return EXIT_OK
