"""`python -m gateway.server`: the gateway under uvicorn, HTTPS on 127.0.0.1 with the local CA's certificate.

One process, uvloop + httptools; the access log carries method, path and status only
(credentials travel in headers, which are never logged).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
from pathlib import Path

from rscf.settings import SETTINGS


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from gateway.app import create_app
    from gateway.runtime import build
    from gateway.tls import ensure_tls

    p = argparse.ArgumentParser(prog="gateway.server")
    p.add_argument("--port", type=int, default=SETTINGS.ports.gateway)
    p.add_argument("--prompts-topic", default=SETTINGS.topics.prompts)
    p.add_argument("--content-topic", default=SETTINGS.topics.content)
    p.add_argument("--control-topic", default=SETTINGS.topics.control)
    p.add_argument("--plain-http", action="store_true", help="no TLS (benchmark baseline of the TLS cost only)")
    # Containers: files from their secrets (deploy/container_secrets.py), since they hold no CA key to make them.
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM) instead of the local CA's")
    p.add_argument("--tls-key", type=Path, help="its key (PEM)")
    p.add_argument("--signing-key", type=Path, help="the token signing key (PEM) instead of the secrets dir's")
    args = p.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack to the log
    listener = _log_off_the_loop()
    rt = build(args.prompts_topic, args.content_topic, args.control_topic, signing_key=args.signing_key)
    if args.tls_cert:
        cert, key = args.tls_cert, args.tls_key
    else:
        tls = ensure_tls()
        cert, key = tls.cert, tls.key
    ssl = {} if args.plain_http else {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    app = create_app(rt)
    # What start-up made lives as long as the process: out of the collector's scans, a full collection
    # no longer walks it while requests wait on the one event loop.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(app, host=SETTINGS.host, port=args.port, loop="uvloop", http="httptools",
                    log_level=os.environ.get("RSCF_GATEWAY_LOG_LEVEL", "info"), access_log=True, log_config=None,
                    server_header=False, proxy_headers=False, timeout_graceful_shutdown=5, **ssl)  # SSE streams never end by themselves
    finally:
        rt.close()
        listener.stop()


def _log_off_the_loop():
    """Log records (uvicorn's access log: one per request) go through a queue to a thread that writes them.

    Why: at 1,000 requests/s a log write that blocks, or a full collection over the start-up objects (frozen
    in `main`), stalls the one event loop every request waits on: the gateway's added p99 was 10-19 ms for
    an added p50 of ~1 ms (`rscf bench gateway --rate 1000`)."""
    import logging.handlers
    import queue

    records: "queue.SimpleQueue[logging.LogRecord]" = queue.SimpleQueue()
    writer = logging.StreamHandler()
    writer.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    listener = logging.handlers.QueueListener(records, writer)
    enqueue = logging.handlers.QueueHandler(records)
    enqueue.setFormatter(logging.Formatter("%(message)s"))  # merges the arguments; the writer adds the rest
    logging.basicConfig(level=logging.INFO, handlers=[enqueue])
    listener.start()
    return listener


if __name__ == "__main__":
    main()
