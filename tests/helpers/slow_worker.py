"""`rscf worker run` with every batch delayed, for the integration tests of slow and hung workers.

    python -m tests.helpers.slow_worker DELAY_MS <rscf worker run options>
"""

from __future__ import annotations

import logging
import sys

from cli.commands.workers import build_handler, worker_settings
from cli.main import build_parser
from inference_workers.worker import serve
from tests.helpers.handlers import DelayedHandler


def main(argv: list[str]) -> int:
    delay_ms, options = float(argv[0]), argv[1:]
    args = build_parser().parse_args(["worker", "run", *options])
    logging.basicConfig(level=getattr(logging, args.log_level.upper()))
    serve(args.pool, DelayedHandler(build_handler(args.pool, args.model, args.version), delay_ms), worker_settings(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
