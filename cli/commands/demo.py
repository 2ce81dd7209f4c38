"""`rscf demo`: the README's first command after installation."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from cli.main import EXIT_FAILED, EXIT_OK, json_parent


def cmd_demo(args: argparse.Namespace) -> int:
    from cli import demo
    from rscf.settings import SETTINGS

    def progress(msg: str) -> None:
        print(f"[demo] {msg}", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    try:
        demo.ensure_running(progress)
        prompts = demo.read_jsonl(Path(args.prompts))
        tenants = demo.read_jsonl(Path(args.tenants))
        progress(f"submitting {len(prompts)} prompts for {len(tenants)} tenants")
        requests, outcome = demo.run_sample(prompts, tenants, args.timeout, progress_bar=not args.json)
    except demo.DemoError as exc:
        print(f"rscf demo failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary = demo.summarize(requests, outcome)
    summary["pools"] = pool_activity(t0)
    report = demo.write_report(
        requests, outcome, summary, SETTINGS.paths.repo / "reports" / f"demo-{datetime.now():%Y%m%d-%H%M%S}.html"
    )
    summary["report"] = str(report)
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(demo.format_summary(summary))
        for line in summary["pools"]["events"][-12:]:
            print(f"pools: {line}")
        print(f"pools now: {summary['pools']['replicas']}  (the pool controller scales them; log: "
              f"{summary['pools']['log']})")
        print(f"\nreport:            {report}")
        print(f"Flink Web UI:      {SETTINGS.flink_url}  (job rscf-content-pipeline)")
        print(f"Prometheus:        {SETTINGS.prometheus_url}  (user admin: rscf credentials prometheus)")
        print('your own prompts:  .venv/bin/rscf submit --tenant globex --modality text "..."')
        print("follow results:    .venv/bin/rscf results --follow")
        print("stop everything:   .venv/bin/rscf down   (workers, job and stack)")
        print(f"(took {summary['wall_s']} s; the stack is left running)")
    return EXIT_OK if not outcome.missing else EXIT_FAILED


def pool_activity(since_monotonic: float) -> dict:
    """What the pool controller did during the demo (replicas started, drained, pools woken or put
    to sleep) and the replicas running now, from its log and the replicas' PID files."""
    from inference_workers import supervisor
    from rscf.pools import POOLS
    from rscf.settings import SETTINGS

    log = SETTINGS.paths.logs / "pool-controller.log"
    since = datetime.fromtimestamp(time.time() - (time.monotonic() - since_monotonic)).strftime("%Y-%m-%d %H:%M:%S")
    events = []
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line[:19] >= since and any(k in line for k in (" started (pid", "draining", "cold start", "reason='scale",
                                                                "reason='activate")):
                events.append(line[11:19] + " " + line.split("rscf.pool_controller: ", 1)[-1][:160])
    except FileNotFoundError:
        pass
    return {"events": events, "log": str(log),
            "replicas": {p: len(supervisor.alive_replicas(p)) for p in POOLS}}


def register(sub: argparse._SubParsersAction) -> None:
    from cli.demo import SAMPLE_PROMPTS, SAMPLE_TENANTS

    p = sub.add_parser("demo", parents=[json_parent()], help="bring everything up and run the sample prompts")
    p.add_argument("--prompts", default=str(SAMPLE_PROMPTS))
    p.add_argument("--tenants", default=str(SAMPLE_TENANTS))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all final results")
    p.set_defaults(func=cmd_demo)
