"""`rscf bench serde|pipeline|handlers|workers`: the benchmarks behind the README's figures.

Each verb parses its options and prints; the measuring is in `tools/` (serde_bench, pipeline_bench,
handler_bench, workers_bench).
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.commands.models import s3_reachable
from cli.commands.workers import build_handler
from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from jobs.config import DELIVERY_MODES, EXACTLY_ONCE
from rscf.pools import ECHO, IMAGE, SPEECH, TEXT_SMALL
from rscf.settings import SETTINGS

# `bench handlers --handler KIND`: the pool whose model each kind benchmarks.
KINDS = {"text": TEXT_SMALL, "image": IMAGE, "speech": SPEECH, "echo": ECHO}


def cmd_serde(args: argparse.Namespace) -> int:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    from tools.serde_bench import bench_serde

    result = bench_serde(args.n, args.registry_url)
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    r = result["records_per_s"]
    print(f"PromptRequest, {result['record_bytes']} bytes framed, n={args.n}, registry {result['registry']}, best of 5 interleaved rounds, one core")
    print(f"encode  plain fastavro {r['plain_encode']:>9,}/s   TopicSerde {r['serde_encode']:>9,}/s   ratio {result['encode_ratio']:.3f}")
    print(f"decode  plain fastavro {r['plain_decode']:>9,}/s   TopicSerde {r['serde_decode']:>9,}/s   ratio {result['decode_ratio']:.3f}")
    print(f"decode  older writer schema resolved to current: {r['serde_decode_resolving_old_writer']:,}/s")
    return EXIT_OK


def cmd_pipeline(args: argparse.Namespace) -> int:
    from tools.pipeline_bench import run_bench

    try:
        result = run_bench(rate=args.rate, duration_s=args.duration, local=args.local, progress=not args.json,
                           parallelism=args.parallelism, warmup_s=args.warmup, delivery=args.delivery,
                           checkpoint_interval_ms=args.checkpoint_interval_ms)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return EXIT_OK


def bench_handler_for(kind: str, model: str | None, device: str | None, max_batch: int):
    """The handler to benchmark: --model, else the registry's pool model, else a local build."""
    from inference_workers.handlers import EchoHandler, ImageHandler, SpeechHandler, TextHandler
    from inference_workers.models import catalog

    overrides = {"device": device, "max_batch": max_batch} if device else {"max_batch": max_batch}
    if kind == "echo":
        return EchoHandler(max_batch=max_batch)
    if model:
        return catalog.load_handler(model, **overrides)
    if s3_reachable():
        from inference_workers.models.registry import RegistryError

        try:
            return catalog.load_handler(KINDS[kind], **overrides)
        except RegistryError:
            pass
    if kind == "text":
        return TextHandler(catalog.build_smollm2(), model_name="smollm2-135m", model_version="local", **overrides)
    if kind == "image":
        return ImageHandler(catalog.build_shapes(), model_name="shapes-ddpm", model_version="local", **overrides)
    return SpeechHandler(model_name="piper-joe", model_version="local", max_batch=max_batch)


def cmd_handlers(args) -> int:
    from tools.handler_bench import bench_handler, format_table, rows_as_dicts

    try:
        batches = sorted({int(b) for b in args.batches.split(",")})
    except ValueError:
        print("--batches wants comma-separated integers", file=sys.stderr)
        return EXIT_BAD_INPUT
    kinds = [args.handler] if args.handler else ["echo", "text", "image", "speech"]
    results = []
    for kind in kinds:
        # max_batch = the largest size, so each batch is one generate call
        handler = bench_handler_for(kind, args.model, args.device, max(batches))
        kwargs = {"max_tokens": args.max_tokens} if kind == "text" else (
            {"steps": args.steps, "size": args.size} if kind == "image" else {})
        rows = bench_handler(kind, handler, batches, min_seconds=args.min_seconds, request_kwargs=kwargs,
                             log=(lambda m: print(m, file=sys.stderr)) if not args.json else None)
        desc = handler.describe()
        results.append({"handler": kind, "describe": desc, "rows": rows_as_dicts(rows), "request": kwargs})
        if not args.json:
            print(format_table(rows, desc))
            print()
    if args.json:
        print(json.dumps({"results": results}, default=str))
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    try:
        import torch

        torch.set_num_threads(SETTINGS.limits.torch_threads)
    except ImportError:
        pass
    from confluent_kafka import KafkaException

    from tools.workers_bench import run_bench

    if args.pool == "echo":
        from inference_workers.handlers.echo import EchoHandler

        # A model-free handler with a simulated cost profile (fixed per batch + per item), so the
        # ratio measures runtime overhead against something that batches like a model does.
        handler = EchoHandler(batch_latency_ms=args.echo_batch_ms, item_latency_ms=args.echo_item_ms)
    else:
        handler = build_handler(args.pool)
    say = (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    try:
        res = run_bench(args.pool, handler, n=args.n, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                        progress=say, use_tqdm=not args.json)
    except KafkaException as exc:
        print(f"kafka unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(res.as_dict()))
    else:
        print(f"pool {res.pool}: {res.answered}/{res.n} answered, {res.errors} errors, max batch {res.max_batch} (mean {res.mean_batch:.1f})")
        print(f"offline batched throughput {res.offline_rps:10.1f} req/s")
        print(f"worker throughput (Kafka)  {res.worker_rps:10.1f} req/s   ratio {res.ratio:.2f} (target >= 0.8)")
        print(f"queue ms  p50 {res.queue_ms_p50:8.1f}  p95 {res.queue_ms_p95:8.1f}")
        print(f"e2e ms    p50 {res.e2e_ms_p50:8.1f}  p95 {res.e2e_ms_p95:8.1f}")
    return EXIT_OK if res.answered == res.n else EXIT_FAILED


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench", required=True)

    p = bsub.add_parser("serde", parents=[json_parent()], help="TopicSerde vs plain fastavro throughput")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--registry-url", default=None, help="use a real registry (default: in-process)")
    p.set_defaults(func=cmd_serde)

    p = bsub.add_parser("pipeline", parents=[json_parent()],
                        help="prompts/s and pipeline overhead latency with an echo worker")
    p.add_argument("--rate", type=int, default=500, help="prompts per second offered")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--local", action="store_true", help="run the job in a local MiniCluster, not the cluster")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds of load at --rate before measuring (JIT of a fresh TaskManager), then drained")
    p.add_argument("--parallelism", "-p", type=int, default=1,
                   help="job parallelism (and partitions per topic); thread-mode subtasks in one TaskManager "
                        "share one Python interpreter lock")
    p.add_argument("--delivery", choices=DELIVERY_MODES, default=EXACTLY_ONCE,
                   help="the job's delivery mode (default %(default)s; the reader always reads read_committed)")
    p.add_argument("--checkpoint-interval-ms", type=int, default=0,
                   help="the job's checkpoint interval (default: the delivery mode's, see jobs/README.md)")
    p.set_defaults(func=cmd_pipeline)

    p = bsub.add_parser("handlers", parents=[json_parent()], help="offline handler throughput per batch size")
    p.add_argument("--handler", choices=sorted(KINDS), help="default: all")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--model", default=None, help="registry name, local directory or hub id")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-tokens", type=int, default=32, help="text: new tokens per request")
    p.add_argument("--steps", type=int, default=50, help="image: denoising steps")
    p.add_argument("--size", type=int, default=64, help="image: output width and height")
    p.add_argument("--min-seconds", type=float, default=0.0, help="repeat each batch size at least this long")
    p.set_defaults(func=cmd_handlers)

    p = bsub.add_parser("workers", parents=[json_parent()], help="worker throughput through Kafka vs offline batching")
    p.add_argument("--pool", required=True, choices=(ECHO, TEXT_SMALL, IMAGE))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--max-batch", type=int, default=SETTINGS.limits.worker_max_batch)
    p.add_argument("--max-wait-ms", type=float, default=SETTINGS.limits.worker_max_wait_ms)
    p.add_argument("--echo-batch-ms", type=float, default=10.0, help="echo pool: simulated cost per batch")
    p.add_argument("--echo-item-ms", type=float, default=0.5, help="echo pool: simulated cost per request")
    p.set_defaults(func=cmd_workers)

    from cli.commands.backfill import register_bench  # `rscf bench backfill` (issue #17)

    register_bench(bsub)
