"""`rscf models list|publish|fetch|build-defaults|train-image`: the model registry and the default models."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.settings import SETTINGS


def s3_reachable(timeout: float = 1.0) -> bool:
    """A cheap TCP probe, so commands fail fast instead of waiting on client retries."""
    try:
        with socket.create_connection((SETTINGS.host, SETTINGS.ports.s3), timeout=timeout):
            return True
    except OSError:
        return False


def _registry():
    from inference_workers.models.registry import ModelRegistry

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
    from inference_workers.models.registry import RegistryError

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
    from inference_workers.models.registry import RegistryError

    if not s3_reachable():
        return _unavailable()
    try:
        path = _registry().fetch(args.name, args.version, progress=not args.json)
    except RegistryError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    _print(args, {"name": args.name, "path": str(path)}, str(path))
    return EXIT_OK


def _train_missing_shapes(registry, minutes: float, only: set[str] | None, log) -> None:
    """Train the shapes UNet when build-defaults is to publish it and no trained one exists (the catalog never trains)."""
    from inference_workers.models.catalog import build_dir, trained_shapes

    if (only and "shapes-ddpm" not in only) or registry.versions("shapes-ddpm") or trained_shapes() is not None:
        return
    from tools.train_image import train

    log("training shapes-ddpm ...")
    train(build_dir("shapes-ddpm"), minutes=minutes)


def cmd_build_defaults(args) -> int:
    from inference_workers.models.catalog import build_defaults

    if not s3_reachable():
        return _unavailable()
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    registry, only = _registry(), set(args.only) if args.only else None
    _train_missing_shapes(registry, args.image_minutes, only, say)
    report = build_defaults(registry, image_minutes=args.image_minutes, only=only, log=say)
    text = "\n".join(f"{r['name']:<14} {r['action']:<10} {r.get('version') or ''} {r.get('reason', '')}"
                     for r in report)
    _print(args, {"models": report}, text)
    return EXIT_OK if all(r["action"] != "skipped" for r in report) else EXIT_FAILED


def cmd_train_image(args) -> int:
    from inference_workers.models.catalog import build_dir
    from tools.train_image import train

    out = Path(args.out) if args.out else build_dir("shapes-ddpm")
    report = train(out, minutes=args.minutes, seed=args.seed, batch_size=args.batch_size,
                   threads=SETTINGS.limits.torch_threads, progress=not args.json)
    _print(args, report.__dict__, f"trained {report.steps} steps in {report.seconds:.0f} s, "
                                  f"loss {report.final_loss:.4f}, {report.params} params -> {report.out}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
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
