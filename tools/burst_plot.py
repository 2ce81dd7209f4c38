"""`rscf bench burst --html`: one self-contained HTML page (inline SVG, no plotting library) with, per
run, replicas and lag over time and every request's latency by priority, the burst shaded."""

from __future__ import annotations

import html
import json
from pathlib import Path

COLORS = {"HIGH": "#d62728", "NORMAL": "#1f77b4", "LOW": "#9aa0a6"}
W, H, PAD = 900, 180, 40


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi <= lo else a + (v - lo) / (hi - lo) * (b - a)


def _frame(title: str, tmax: float, ymax: float, unit: str, plan) -> list[str]:
    shades = []
    for start in plan.burst_starts():
        x0, x1 = _scale(start, 0, tmax, PAD, W - 10), _scale(start + plan.burst_s, 0, tmax, PAD, W - 10)
        shades.append(f'<rect x="{x0:.1f}" y="10" width="{x1 - x0:.1f}" height="{H - 10}" fill="#fff3cd"/>')
    return [f'<svg width="{W}" height="{H + 30}" xmlns="http://www.w3.org/2000/svg" font-size="11">', *shades,
            f'<text x="{PAD}" y="9">{html.escape(title)} (max {ymax:.0f} {unit}; shaded: burst)</text>',
            f'<line x1="{PAD}" y1="{H}" x2="{W - 10}" y2="{H}" stroke="#333"/>',
            f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H}" stroke="#333"/>',
            f'<text x="{W - 60}" y="{H + 14}">{tmax:.0f} s</text>', f'<text x="4" y="16">{ymax:.0f}</text>']


def _series_svg(title: str, points: list[tuple[float, float]], tmax: float, plan, unit: str, color: str) -> str:
    ymax = max((v for _, v in points), default=1) or 1
    parts = _frame(title, tmax, ymax, unit, plan)
    path = " ".join(f"{_scale(t, 0, tmax, PAD, W - 10):.1f},{_scale(v, 0, ymax, H, 12):.1f}" for t, v in points)
    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
    return "\n".join(parts + ["</svg>"])


def _latency_svg(run, tmax: float, plan) -> str:
    t0 = min((t for t, _, _ in run.sent.values()), default=0)
    pts = [((t - t0), (run.answered[rid] - t) * 1000, prio) for rid, (t, prio, _) in run.sent.items() if rid in run.answered]
    ymax = max((v for _, v, _ in pts), default=1) or 1
    parts = _frame(f"{run.name}: latency per request (ms), HIGH red, NORMAL blue, LOW grey", tmax, ymax, "ms", plan)
    for prio in ("LOW", "NORMAL", "HIGH"):  # HIGH drawn last, on top; LOW/NORMAL thinned to ~600 dots each
        mine = [x for x in pts if x[2] == prio]
        stride = 1 if prio == "HIGH" else max(1, len(mine) // 600)
        for t, v, p in mine[::stride]:
            if p == prio:
                parts.append(f'<circle cx="{_scale(t, 0, tmax, PAD, W - 10):.1f}" cy="{_scale(v, 0, ymax, H, 12):.1f}" '
                             f'r="{2.5 if p == "HIGH" else 1.2}" fill="{COLORS[p]}"/>')
    return "\n".join(parts + ["</svg>"])


def write_html(path: Path, plan, runs) -> None:
    tmax = max((s["t"] for r in runs for s in r.samples), default=plan.duration_s)
    pool = getattr(plan, "pool", "echo")
    body = [f"<h1>rscf bench burst --pool {html.escape(pool)}</h1><p>plan: <code>{html.escape(json.dumps(plan.__dict__))}</code></p>"]
    for r in runs:
        body.append(f"<h2>{html.escape(r.name)}</h2><pre>{html.escape(json.dumps(r.summary(plan), indent=1))}</pre>")
        body.append(_series_svg(f"{r.name}: replicas consuming", [(s["t"], s["replicas"]) for s in r.samples],
                                 tmax, plan, "replicas", "#2ca02c"))
        body.append(_series_svg(f"{r.name}: consumer lag (all lanes)", [(s["t"], s["lag"]) for s in r.samples],
                                 tmax, plan, "requests", "#ff7f0e"))
        body.append(_latency_svg(r, tmax, plan))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<!doctype html><meta charset=utf-8><title>rscf bench burst</title>"
                    "<body style='font-family:sans-serif'>" + "\n".join(body) + "</body>", encoding="utf-8")
