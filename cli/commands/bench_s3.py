"""`rscf bench s3-encryption`: what encryption at rest costs the object store (issue #16 item 5), on two
private `weed mini` servers; the measuring is in tools/s3_encryption_bench.py."""

from __future__ import annotations

import argparse
import json
import sys

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent


def cmd_s3_encryption(args: argparse.Namespace) -> int:
    from tools.s3_encryption_bench import Plan, run, table

    if min(args.small, args.small_kb, args.large, args.large_kb, args.rounds) < 1:
        print("--small/--small-kb/--large/--large-kb/--rounds must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    plan = Plan(small_n=args.small, small_kb=args.small_kb, large_n=args.large, large_kb=args.large_kb,
                rounds=args.rounds)
    say = (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    try:
        out = run(plan, say)
    except RuntimeError as exc:  # weed mini did not start
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(out) if args.json else table(out))
    return EXIT_OK if out["encrypted_at_rest_proven"] else EXIT_FAILED


def register_bench(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("s3-encryption", parents=[json_parent()],
                        help="object store encryption at rest vs plain: latency, MB/s, CPU per MB, and proof "
                             "that volume files hold no plaintext (two private weed mini servers)")
    p.add_argument("--small", type=int, default=300, help="small objects per round [300]")
    p.add_argument("--small-kb", type=int, default=64, help="their size [64 KB, an image artifact]")
    p.add_argument("--large", type=int, default=12, help="large objects per round [12]")
    p.add_argument("--large-kb", type=int, default=4096, help="their size [4 MB]")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per size (median reported) [4]")
    p.set_defaults(func=cmd_s3_encryption)
