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

    features = tuple(f for f in (args.features or "").split(",") if f)
    unknown = set(features) - {"moderation_model", "rag"}
    if unknown or not 0.0 <= args.repeat_share <= 1.0:
        print(f"--features takes moderation_model and/or rag (not {sorted(unknown)}); "
              "--repeat-share is within 0..1", file=sys.stderr)
        return EXIT_BAD_INPUT
    runs = [()] if not features else ([(), features] if args.reference else [features])
    out = {}
    try:
        for feats in runs:  # the echo path first: the reference, measured in the same command
            out["echo" if not feats else "full"] = run_bench(
                rate=args.rate, duration_s=args.duration, local=args.local, progress=not args.json,
                parallelism=args.parallelism, warmup_s=args.warmup, delivery=args.delivery,
                checkpoint_interval_ms=args.checkpoint_interval_ms, features=feats, repeat_share=args.repeat_share)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if features:  # per-step cost of the same path, in process, against the same service and Redis
        from tools.stage_profile import run_full

        try:
            out["full"]["stages_in_process"] = run_full(512, repeat_share=args.repeat_share)
        except Exception as exc:  # noqa: BLE001 - the run's figures stand without it
            out["full"]["stages_in_process"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    result = out.get("full") or out["echo"]
    if "full" in out and "echo" in out:
        e, f = out["echo"], out["full"]
        result = {"full": f, "echo": e, "ratio": {
            "throughput_full_over_echo": round(f["throughput_per_s"] / max(e["throughput_per_s"], 1e-9), 3),
            "overhead_p99_full_minus_echo_ms": (round(f["overhead_ms"]["p99"] - e["overhead_ms"]["p99"], 1)
                                                if f["overhead_ms"]["p99"] is not None and e["overhead_ms"]["p99"]
                                                is not None else None)}}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return EXIT_OK if all(r["failures"] == 0 for r in out.values()) else EXIT_FAILED


def cmd_embeddings(args: argparse.Namespace) -> int:
    from tools.embed_quality import run

    if args.service:
        from tools.embed_quality import service_throughput

        try:
            result = service_throughput(SETTINGS.embedder_url)
        except Exception as exc:  # noqa: BLE001 - the service away or failing
            print(f"embedding service unreachable at {SETTINGS.embedder_url}: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        return EXIT_OK
    names = [n for n in args.backends.split(",") if n]
    try:
        result = run(names, progress=None if args.json else (lambda n: print(f"  {n} ...", file=sys.stderr)))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    print(f"{'backend':<12} {'mod. macro-F1':>13} {'accuracy':>9} {'shipped':>8} {'recall@1':>9} {'recall@3':>9} "
          f"{'ms b1':>7} {'ms b32':>7} {'ms mixed, 1 fwd / grouped':>26}")
    for name, r in result.items():
        m, q, c = r["moderation"], r["retrieval"], r["ms_per_text_one_thread"]
        mixed = (f"{c['mixed_one_forward']:.2f} / {c['mixed_length_groups']:.2f}"
                 if "mixed_one_forward" in c else "-")
        shipped = "-" if m.get("shipped_classifier") is None else f"{m['shipped_classifier']:.3f}"
        print(f"{name:<12} {m['macro_f1']:>13.3f} {m['accuracy']:>9.3f} {shipped:>8} {q['recall_at_1']:>9.3f} "
              f"{q['recall_at_3']:>9.3f} {c['batch_1']:>7.2f} {c['batch_32']:>7.2f} {mixed:>26}")
    first = next(iter(result.values()))
    print(f"({first['moderation']['examples']} moderation examples, 5-fold CV; "
          f"{first['retrieval']['queries']} retrieval queries; one thread; shipped: the job's classifier, fitted on "
          f"the int8 vectors, on this backend's)")
    return EXIT_OK


def cmd_vectors(args: argparse.Namespace) -> int:
    import redis

    from tools.vector_bench import run

    try:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    except ValueError:
        print("--sizes wants comma-separated integers", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = run(sizes, batch=args.batch,
                     progress=None if args.json else (lambda m: print(f"  {m}", file=sys.stderr, flush=True)))
    except redis.RedisError as exc:
        print(f"redis unreachable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return EXIT_OK


def cmd_gateway(args: argparse.Namespace) -> int:
    from tools.gateway_bench import run

    try:
        r = run(rate=args.rate, duration_s=args.duration, plain=args.plain_http)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['rate_per_s']:.0f} req/s open loop, {r['duration_s']} s per arm, TLS {r['tls']}; {r['load']}")
        for arm in ("direct", "gateway"):
            a = r[arm]
            print(f"  {arm:<8} p50 {a['p50_ms']:7.2f} ms   p99 {a['p99_ms']:7.2f} ms   errors {a['errors']}")
        print(f"  added    p50 {r['added']['p50_ms']:7.2f} ms   p99 {r['added']['p99_ms']:7.2f} ms   "
              f"(target 2 / 10 ms: {'met' if r['met'] else 'NOT met'}); gateway CPU "
              f"{r['gateway_cpu_us_per_request']} µs/request; HTTP {r['http_status']}")
    return EXIT_OK if not (r["direct"]["errors"] or r["gateway"]["errors"]) else EXIT_FAILED


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
    p.add_argument("--features", default="",
                   help="tenant features on top of echo: moderation_model,rag is the full path (issue #14)")
    p.add_argument("--repeat-share", type=float, default=0.3,
                   help="with --features: share of prompts drawn from 60 popular ones (the rest unique)")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="with --features: run the echo path first in the same command as the reference")
    p.set_defaults(func=cmd_pipeline)

    p = bsub.add_parser("embeddings", parents=[json_parent()],
                        help="embedding backends: moderation macro-F1, retrieval recall, ms per text")
    p.add_argument("--backends", default="torch,onnx-int8",
                   help="comma-separated: torch, torch-fp16 / torch-bf16 (the GPU backend's precision, on CPU), "
                        "torch-cuda (on a GPU), onnx-int8, onnx-int8-LK (first K of 6 layers)")
    p.add_argument("--service", action="store_true",
                   help="instead: texts/s of the running embedding service, one per call / calls of 64 / 8 callers")
    p.set_defaults(func=cmd_embeddings)

    p = bsub.add_parser("vectors", parents=[json_parent()],
                        help="Redis vector set at 10k/100k passages: recall vs exact, latency single and pipelined")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--batch", type=int, default=64, help="queries per pipeline (the gate's micro-batch)")
    p.set_defaults(func=cmd_vectors)
    p = bsub.add_parser("gateway", parents=[json_parent()],
                        help="latency the HTTPS gateway adds over producing directly (same run)")
    p.add_argument("--rate", type=float, default=1000, help="requests per second offered to each arm")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per arm")
    p.add_argument("--plain-http", action="store_true", help="gateway without TLS (to see what TLS costs)")
    p.set_defaults(func=cmd_gateway)

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

    from cli.commands.bench_burst import register_bench as register_burst  # issue #15

    register_burst(bsub)
    from cli.commands.bench_s3 import register_bench as register_s3  # issue #16 item 5
    from cli.commands.bench_sharegroups import register_bench as register_sharegroups  # issue #15 item 4

    register_sharegroups(bsub)
    register_s3(bsub)

    from cli.commands.backfill import register_bench  # `rscf bench backfill` (issue #17)

    register_bench(bsub)
