"""`rscf models list|publish|fetch|build-defaults|train-image` and `rscf bench handlers`.

rscf/commands/workers.py calls `register_models(sub)` and `register_bench(sub)`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from rscf.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.settings import SETTINGS

KINDS = {"text": "text-small", "image": "image", "speech": "speech", "echo": "echo"}


def s3_reachable(timeout: float = 1.0) -> bool:
    """A cheap TCP probe, so commands fail fast instead of waiting on client retries."""
    try:
        with socket.create_connection((SETTINGS.host, SETTINGS.ports.s3), timeout=timeout):
            return True
    except OSError:
        return False


def _registry():
    from .registry import ModelRegistry

    return ModelRegistry()


def _unavailable() -> int:
    print(f"object storage not reachable at {SETTINGS.s3_endpoint} (is the stack up? `rscf up`)", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _print(args, data, text: str) -> None:
    print(json.dumps(data, default=str, indent=None) if args.json else text)


# -- models ------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    if not s3_reachable():
        return _unavailable()
    manifests = _registry().list_models()
    rows = [{"name": m.name, "version": m.version, "handler": m.handler, "created_at": m.created_at,
             "files": len(m.files), "bytes": m.metrics.get("bytes")} for m in manifests]
    text = "\n".join([f"{'name':<20} {'version':<8} {'handler':<14} {'MB':>8}  created_at"] + [
        f"{r['name']:<20} {r['version']:<8} {r['handler']:<14} {(r['bytes'] or 0) / 1e6:>8.1f}  {r['created_at']}"
        for r in rows]) if rows else "no models published"
    _print(args, {"models": rows}, text)
    return EXIT_OK


def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def cmd_publish(args) -> int:
    from .registry import RegistryError

    if not Path(args.dir).is_dir():
        print(f"{args.dir} is not a directory", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not s3_reachable():
        return _unavailable()
    try:
        m = _registry().publish(args.dir, args.name, args.version, args.handler,
                                params=_parse_params(args.param), progress=not args.json)
    except RegistryError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    _print(args, json.loads(m.to_json()), f"published {m.name}/{m.version} ({len(m.files)} files)")
    return EXIT_OK


def cmd_fetch(args) -> int:
    from .registry import RegistryError

    if not s3_reachable():
        return _unavailable()
    try:
        path = _registry().fetch(args.name, args.version, progress=not args.json)
    except RegistryError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    _print(args, {"name": args.name, "path": str(path)}, str(path))
    return EXIT_OK


def cmd_build_defaults(args) -> int:
    from .catalog import build_defaults

    if not s3_reachable():
        return _unavailable()
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    report = build_defaults(_registry(), image_minutes=args.image_minutes,
                            only=set(args.only) if args.only else None, log=say)
    text = "\n".join(f"{r['name']:<14} {r['action']:<10} {r.get('version') or ''} {r.get('reason', '')}"
                     for r in report)
    _print(args, {"models": report}, text)
    return EXIT_OK if all(r["action"] != "skipped" for r in report) else EXIT_FAILED


def cmd_train_image(args) -> int:
    from .catalog import build_dir
    from .train_image import train

    out = Path(args.out) if args.out else build_dir("shapes-ddpm")
    report = train(out, minutes=args.minutes, seed=args.seed, batch_size=args.batch_size,
                   threads=SETTINGS.limits.torch_threads, progress=not args.json)
    _print(args, report.__dict__, f"trained {report.steps} steps in {report.seconds:.0f} s, "
                                  f"loss {report.final_loss:.4f}, {report.params} params -> {report.out}")
    return EXIT_OK


def register_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="model registry in object storage; default model builds")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("list", parents=[json_parent()], help="published models and versions")
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("publish", parents=[json_parent()], help="upload a model directory as name/version")
    p.add_argument("dir")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--handler", required=True, choices=("TextHandler", "ImageHandler", "SpeechHandler", "EchoHandler"))
    p.add_argument("--param", action="append", help="handler argument key=value (JSON value), repeatable")
    p.set_defaults(func=cmd_publish)

    p = msub.add_parser("fetch", parents=[json_parent()], help="verified local copy; prints its path")
    p.add_argument("name")
    p.add_argument("--version", default="latest")
    p.set_defaults(func=cmd_fetch)

    p = msub.add_parser("build-defaults", parents=[json_parent()],
                        help="convert SmolLM2, train/reuse the image UNet, publish the Piper voice (skips what exists)")
    p.add_argument("--image-minutes", type=float, default=5.0, help="training budget if no image model exists")
    p.add_argument("--only", action="append", help="smollm2-135m, shapes-ddpm or piper-joe (repeatable)")
    p.set_defaults(func=cmd_build_defaults)

    p = msub.add_parser("train-image", parents=[json_parent()], help="train the shapes diffusion UNet")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--out", default=None, help="default: <cache>/build/shapes-ddpm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_train_image)


# -- bench handlers ----------------------------------------------------------------------------
def bench_handler_for(kind: str, model: str | None, device: str | None, max_batch: int):
    """The handler to benchmark: --model, else the registry's pool model, else a local build."""
    from inference_workers.handlers import EchoHandler, ImageHandler, SpeechHandler, TextHandler

    from . import catalog

    overrides = {"device": device, "max_batch": max_batch} if device else {"max_batch": max_batch}
    if kind == "echo":
        return EchoHandler(max_batch=max_batch)
    if model:
        return catalog.load_handler(model, **overrides)
    if s3_reachable():
        from .registry import RegistryError

        try:
            return catalog.load_handler(KINDS[kind], **overrides)
        except RegistryError:
            pass
    if kind == "text":
        return TextHandler(catalog.build_smollm2(), model_name="smollm2-135m", model_version="local", **overrides)
    if kind == "image":
        return ImageHandler(catalog.build_shapes(), model_name="shapes-ddpm", model_version="local", **overrides)
    return SpeechHandler(model_name="piper-joe", model_version="local", max_batch=max_batch)


def cmd_bench_handlers(args) -> int:
    from .handler_bench import bench_handler, format_table, rows_as_dicts

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


def _bench_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The `bench` command's subparsers, shared with other modules' benchmarks."""
    bench = sub.choices.get("bench")
    if bench is None:
        bench = sub.add_parser("bench", help="benchmarks that print measured numbers")
        return bench.add_subparsers(dest="bench_command", required=True)
    for action in bench._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return bench.add_subparsers(dest="bench_command", required=True)


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = _bench_subparsers(sub).add_parser("handlers", parents=[json_parent()],
                                          help="offline handler throughput per batch size")
    p.add_argument("--handler", choices=sorted(KINDS), help="default: all")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--model", default=None, help="registry name, local directory or hub id")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-tokens", type=int, default=32, help="text: new tokens per request")
    p.add_argument("--steps", type=int, default=50, help="image: denoising steps")
    p.add_argument("--size", type=int, default=64, help="image: output width and height")
    p.add_argument("--min-seconds", type=float, default=0.0, help="repeat each batch size at least this long")
    p.set_defaults(func=cmd_bench_handlers)
