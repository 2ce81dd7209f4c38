"""`rscf` command line: one entry point, each area registers its own subcommands.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad input,
3 a service the command needs is not reachable.
"""

from __future__ import annotations

import argparse
import importlib
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3

# Each module has `register(subparsers)`; a command sets `func(args) -> int`.
COMMAND_MODULES = (
    "cli.commands.stack",
    "cli.commands.schemas",
    "cli.commands.prompts",
    "cli.commands.bench",
    "cli.commands.job",
    "cli.commands.models",
    "cli.commands.workers",
    "cli.commands.demo",
    "cli.commands.knowledge",
    "cli.commands.chaos",
    "cli.commands.evaluate",
    "cli.commands.tenants",
    "cli.commands.backfill",
    "cli.commands.topics",
    "cli.commands.credentials",
)


def json_parent() -> argparse.ArgumentParser:
    """Parent parser giving a subcommand the shared `--json` flag."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rscf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # area not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
