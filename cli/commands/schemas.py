"""`rscf schemas register|check`: the Avro contracts in the schema registry."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.settings import SETTINGS


def registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry-url", default=SETTINGS.registry_url, help="Confluent-compatible registry API")


def cmd_schemas_register(args: argparse.Namespace) -> int:
    from schemas.registry import register_all

    try:
        ids = register_all(args.registry_url)
    except Exception as exc:
        status = getattr(exc, "http_status_code", None)
        print(f"registration failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED if status and status < 500 else EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps({"registry_url": args.registry_url, "subjects": ids}))
    else:
        for subject, sid in ids.items():
            print(f"{subject:45s} id {sid}")
        print(f"{len(ids)} subjects registered, compatibility BACKWARD")
    return EXIT_OK


def cmd_schemas_check(args: argparse.Namespace) -> int:
    from schemas.registry import check

    try:
        ok, messages = check(args.file, args.registry_url, args.subject or None)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        print(f"schema registry at {args.registry_url} unreachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps({"file": args.file, "compatible": ok, "messages": messages}))
    else:
        for message in messages:
            print(message)
    return EXIT_OK if ok else EXIT_FAILED


def register(sub: Any) -> None:
    jp = json_parent()

    schemas = sub.add_parser("schemas", help="register and check the Avro contracts")
    ssub = schemas.add_subparsers(dest="schemas_command", required=True)
    p = ssub.add_parser("register", parents=[jp], help="register every schema, BACKWARD compatibility per subject")
    registry_args(p)
    p.set_defaults(func=cmd_schemas_register)
    p = ssub.add_parser("check", parents=[jp], help="test a changed .avsc against the registered versions")
    p.add_argument("file", help="path to the .avsc (its file stem selects the subjects) or a schema name")
    p.add_argument("--subject", action="append", default=[], help="check against this subject (repeatable)")
    registry_args(p)
    p.set_defaults(func=cmd_schemas_check)
