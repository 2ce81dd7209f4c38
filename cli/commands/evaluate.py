"""`rscf evaluate`: RSCF vs a monolith vs a partially containerised deployment (tools/evaluation.py).

Writes the figures as JSON and an HTML report with charts; prints the table. Exit code 0 when every
request of every run is accounted for (answered, rejected with a reason, or counted lost) and none
was lost in a steady or burst run; 1 otherwise; 2 for bad options; 3 when the stack is not reachable.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from cli.commands.chaos import _interrupt, _stack_reachable
from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or value!r}; choose from {', '.join(allowed)}")
    return names


def _unpublished_models(mix: str) -> list[str]:
    """Models of the mix's pools that the registry cannot resolve (`rscf models build-defaults` publishes them)."""
    from inference_workers.models.registry import unpublished
    from rscf.pools import ECHO, pool as pool_row
    from tools.evaluation_mix import pools

    return unpublished([pool_row(p).model for p in pools(mix) if p != ECHO])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tools import evaluation
    from tools.evaluation_mix import MIXES
    from tools.evaluation_report import spread, spread_markdown, table_markdown, write_html

    try:
        plan = evaluation.Plan(
            deployments=_names(args.deployments, evaluation.DEPLOYMENTS, "deployment"),
            scenarios=_names(args.scenario, evaluation.SCENARIOS, "scenario"),
            rate=args.rate, duration_s=args.duration, drain_s=args.drain, restart_delay_s=args.restart_delay,
            echo_batch_ms=args.echo_batch_ms, echo_item_ms=args.echo_item_ms, repeats=args.repeats,
            mix=_names(args.mix, MIXES, "mix")[0], s3_down_s=args.s3_down,
            s3_latency_ms=args.s3_latency_ms)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.rate <= 0 or args.duration <= 0 or args.s3_latency_ms < 0:
        print("error: --rate and --duration must be positive, --s3-latency-ms not negative", file=sys.stderr)
        return EXIT_BAD_INPUT
    if "rscf" in plan.deployments and (missing := _stack_reachable()):
        print(f"error: {missing} is not reachable; start the stack with `rscf up`", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if plan.mix != "echo" and (models := _unpublished_models(plan.mix)):
        print(f"error: models not published: {', '.join(models)}; run `rscf models build-defaults`", file=sys.stderr)
        return EXIT_UNAVAILABLE
    signal.signal(signal.SIGTERM, _interrupt)
    total = sum(len(evaluation.schedule(s, plan.rate, plan.duration_s)) for s in plan.scenarios) \
        * len(plan.deployments) * plan.repeats
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="req", desc="evaluate")
    report = evaluation.evaluate(plan, progress=bar.update if bar else lambda _n: None)
    if bar:
        bar.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, default=str) + "\n")
    html = write_html(report, out.with_suffix(".html"))
    if args.json:
        print(json.dumps({"runs": report["runs"], "spread": spread(report["runs"]), "plan": report["plan"],
                          "report": str(html)}, default=str))
    else:
        print(table_markdown(report["runs"]))
        print(spread_markdown(report["runs"]))
        print(f"figures: {out}   report: {html}")
    accounted = all(r["answered"] + r["rejected"] + r["errors"] + r["lost"] == r["sent"] for r in report["runs"])
    no_loss = all(r["lost"] == 0 for r in report["runs"] if r["scenario"] in ("steady", "burst"))
    return EXIT_OK if accounted and no_loss else EXIT_FAILED


def register(sub: argparse._SubParsersAction) -> None:
    from tools.evaluation import DEPLOYMENTS, SCENARIOS

    p = sub.add_parser("evaluate", parents=[json_parent()],
                       help="RSCF vs a monolith vs a partially containerised deployment, same load")
    p.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    p.add_argument("--scenario", default=",".join(SCENARIOS), help="steady, burst, outage, s3-outage, slow-s3 (comma-separated)")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second (a burst sends 10x)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per scenario")
    p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for answers after the load")
    p.add_argument("--restart-delay", type=float, default=5.0,
                   help="outage: seconds from the kill to the restart (a restart policy's delay)")
    p.add_argument("--echo-batch-ms", type=float, default=10.0, help="simulated model cost per batch")
    p.add_argument("--echo-item-ms", type=float, default=0.5, help="simulated model cost per request")
    p.add_argument("--repeats", type=int, default=1, help="run every scenario this many times (spread)")
    p.add_argument("--mix", default="echo", help="echo (simulated model cost) or real (SmolLM2 text, shapes "
                   "image, Piper speech and echo: tools/evaluation_mix.py)")
    p.add_argument("--s3-down", type=float, default=10.0, help="seconds object storage is frozen in s3-outage")
    p.add_argument("--s3-latency-ms", type=int, default=500,
                   help="slow-s3: milliseconds added each way to every object storage request in the middle third")
    p.add_argument("--out", default=".data/evaluation/evaluation.json", help="figures; the HTML report goes next to it")
    p.set_defaults(func=cmd_evaluate)
