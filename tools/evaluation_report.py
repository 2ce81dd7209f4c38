"""The evaluation's HTML report: the table, latency over time and latency distributions per scenario.

Charts are inline SVG written here (no plotting library in the stack's venv; a page that opens
offline in any browser): one chart per scenario with every deployment's requests, so a reader sees
the kill, the burst and the recovery where they happen.
"""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path

COLOURS = {"rscf": "#1f77b4", "monolith": "#d62728", "partial": "#2ca02c"}
W, H, PAD = 760, 260, 46
MAX_POINTS = 400  # per deployment and chart (every answer counts in the table)

COLUMNS = [
    ("deployment", lambda r: r["deployment"]), ("scenario", lambda r: r["scenario"]),
    ("sent", lambda r: r["sent"]), ("answered", lambda r: r["answered"]), ("rejected", lambda r: r["rejected"]),
    ("errors", lambda r: r["errors"]), ("lost", lambda r: r["lost"]), ("dup", lambda r: r["duplicated"]),
    ("mean ms", lambda r: r["latency_ms"]["mean"]), ("sd", lambda r: r["latency_ms"]["sd"]),
    ("p50", lambda r: r["latency_ms"]["p50"]), ("p95", lambda r: r["latency_ms"]["p95"]),
    ("p99", lambda r: r["latency_ms"]["p99"]), ("premium p99", lambda r: r["premium_latency_ms"]["p99"]),
    ("answers/s", lambda r: r["throughput_per_s"]), ("CPU ms/answer", lambda r: r["cpu_ms_per_answer"]),
    ("USD/1k", lambda r: r["usd_per_1k_answers"]),
    ("MTTR first/steady s", lambda r: "" if "recovery" not in r else
     f"{r['recovery']['first_answer_s']} / {r['recovery']['steady_s']}"),
]


GPU_COLUMNS = [  # only when a run had a GPU (tools/gpu_sampler.py)
    ("GPU util mean/max %", lambda r: "" if not (r.get("gpu") or {}).get("gpus") else " / ".join(
        f"{g['util_mean_pct']}/{g['util_max_pct']}" for g in r["gpu"]["per_gpu"].values())),
    ("GPU-s busy/held", lambda r: "" if not (r.get("gpu") or {}).get("gpus") else
     f"{r['gpu']['gpu_busy_s']} / {r['gpu']['gpu_held_s']}"),
    ("USD/1k with GPU", lambda r: r.get("usd_per_1k_answers_with_gpu", "")),
]


def table_markdown(runs: list[dict]) -> str:
    columns = COLUMNS + (GPU_COLUMNS if any((r.get("gpu") or {}).get("gpus") for r in runs) else [])
    head = "| " + " | ".join(c for c, _ in columns) + " |\n| " + " | ".join("---" for _ in columns) + " |\n"
    return head + "".join("| " + " | ".join(str(f(r)) for _, f in columns) + " |\n" for r in runs)


SPREAD_FIGURES = (("p50 ms", lambda r: r["latency_ms"]["p50"]), ("p99 ms", lambda r: r["latency_ms"]["p99"]),
                  ("premium p99 ms", lambda r: r["premium_latency_ms"]["p99"]),
                  ("answers/s", lambda r: r["throughput_per_s"]), ("CPU ms/answer", lambda r: r["cpu_ms_per_answer"]))


def spread(runs: list[dict]) -> list[dict]:
    """Per deployment and scenario over its repeats: the median and the range of each figure, and every
    request's fate summed (a single run on a noisy 2-core machine is one draw; `--repeats N` gives N)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["deployment"], r["scenario"]), []).append(r)
    out = []
    for (dep, scenario), rs in groups.items():
        row: dict = {"deployment": dep, "scenario": scenario, "repeats": len(rs),
                     **{k: sum(r[k] for r in rs) for k in ("sent", "answered", "rejected", "errors", "lost")}}
        for name, f in SPREAD_FIGURES:
            values = [v for v in (f(r) for r in rs) if v is not None]
            row[name] = {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)} \
                if values else None
        out.append(row)
    return out


SPREAD_HEAD = ("deployment", "scenario", "repeats", "sent", "answered", "lost")


def spread_cells(runs: list[dict]) -> list[list[str]]:
    """The spread table's rows as text (SPREAD_HEAD, then each figure as `median [min-max]`); none when
    every scenario ran once."""
    rows = spread(runs)
    if all(r["repeats"] < 2 for r in rows):
        return []
    return [[str(r[k]) for k in SPREAD_HEAD] + ["" if r[n] is None else f"{r[n]['median']} [{r[n]['min']}-{r[n]['max']}]"
                                                for n, _ in SPREAD_FIGURES] for r in rows]


def spread_markdown(runs: list[dict]) -> str:
    """The spread table; empty when every scenario ran once."""
    cells = spread_cells(runs)
    if not cells:
        return ""
    head = [*SPREAD_HEAD, *(f"{n} median [min-max]" for n, _ in SPREAD_FIGURES)]
    return "| " + " | ".join(head) + " |\n|" + " --- |" * len(head) + "\n" + \
        "".join("| " + " | ".join(row) + " |\n" for row in cells)


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def latency_over_time(scenario: str, series: list[dict]) -> str:
    pts = [(s["deployment"], t / 1000, lat) for s in series if s["scenario"] == scenario
           for t, lat, status, _p in s["points"] if lat is not None and status == "SUCCEEDED"]
    lost = [(s["deployment"], t / 1000) for s in series if s["scenario"] == scenario
            for t, lat, status, _p in s["points"] if status != "SUCCEEDED"]
    if not pts:
        return "<p>no answers</p>"
    tmax = max(max(p[1] for p in pts), max((x[1] for x in lost), default=0))
    lmax = max(math.log10(max(p[2], 1)) for p in pts)
    x = _scale(0, tmax, PAD, W - 10)
    y = _scale(0, max(lmax, 1.0), H - PAD, 10)
    out = [f'<svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
           f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#888"/>',
           f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>',
           f'<text x="{W / 2}" y="{H - 12}">seconds since the start (send time)</text>',
           '<text x="4" y="20">ms (log)</text>']
    for dec in range(0, int(max(lmax, 1.0)) + 1):
        out.append(f'<text x="6" y="{y(dec) + 4:.0f}">{10 ** dec}</text>')
    for dep in COLOURS:
        mine = [p for p in pts if p[0] == dep]
        stride = max(1, len(mine) // MAX_POINTS)  # a readable chart, a page of ~100 kB
        out.append(f'<g fill="{COLOURS[dep]}" fill-opacity="0.6">' + "".join(
            f'<circle cx="{x(t):.0f}" cy="{y(math.log10(max(lat, 1))):.0f}" r="1.6"/>' for _d, t, lat in mine[::stride])
            + "</g>")
    for dep, t in lost:
        out.append(f'<text x="{x(t):.1f}" y="{H - PAD + 14}" fill="{COLOURS.get(dep, "#555")}">x</text>')
    legend = " ".join(f'<tspan fill="{c}">&#9679; {d}</tspan>' for d, c in COLOURS.items())
    out.append(f'<text x="{W - 260}" y="20">{legend}</text></svg>')
    return "".join(out)


def distribution(scenario: str, series: list[dict]) -> str:
    x = None
    out = [f'<svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
           f'<text x="{W / 2 - 80}" y="{H - 12}">latency ms (log) &#8594; share of answers</text>']
    lats = {s["deployment"]: sorted(lat for _t, lat, status, _p in s["points"] if lat is not None
                                    and status == "SUCCEEDED") for s in series if s["scenario"] == scenario}
    top = max((math.log10(max(v[-1], 1)) for v in lats.values() if v), default=1.0)
    x = _scale(0, max(top, 1.0), PAD, W - 10)
    y = _scale(0, 1, H - PAD, 10)
    for dec in range(0, int(max(top, 1.0)) + 1):
        out.append(f'<text x="{x(dec):.0f}" y="{H - PAD + 14}">{10 ** dec}</text>')
    for dep, values in lats.items():
        if not values:
            continue
        stride = max(1, len(values) // MAX_POINTS)
        picked = list(enumerate(values))[::stride] + [(len(values) - 1, values[-1])]
        path = " ".join(f"{x(math.log10(max(v, 1))):.0f},{y((i + 1) / len(values)):.0f}" for i, v in picked)
        out.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS.get(dep, "#555")}" stroke-width="1.5"/>')
    out.append("</svg>")
    return "".join(out)


def replicas_over_time(scenario: str, series: list[dict]) -> str:
    """Live model replicas (all pools) per deployment over the run: the pool controller's scaling
    and restarts for RSCF, the restart policy for the baselines."""
    lines = {s["deployment"]: [(t / 1000, sum(n.values())) for t, n in s.get("replicas", [])]
             for s in series if s["scenario"] == scenario}
    pts = [p for v in lines.values() for p in v]
    if not pts:
        return "<p>no replica samples</p>"
    x = _scale(0, max(t for t, _ in pts) or 1.0, PAD, W - 10)
    top = max(max(n for _, n in pts), 1)
    out = [f'<svg width="{W}" height="{H // 2 + PAD}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
           f'<text x="{W / 2}" y="{H // 2 + PAD - 4}">seconds since the start</text>']
    y = _scale(0, top + 0.5, H // 2, 10)
    for k in range(0, top + 1):
        out.append(f'<text x="6" y="{y(k) + 4:.0f}">{k}</text>')
    for dep, v in lines.items():
        path = " ".join(f"{x(t):.0f},{y(n):.0f}" for t, n in v)
        out.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS.get(dep, "#555")}" stroke-width="1.5"/>')
    out.append("</svg>")
    return "".join(out)


def write_html(report: dict, path: Path, discussion: str = "") -> Path:
    runs, series = report["runs"], report["series"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(f(r)))}</td>" for _, f in COLUMNS) + "</tr>" for r in runs)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>RSCF evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 6px;border-bottom:1px solid #ddd;"
        "font-size:12px}</style>",
        "<h1>RSCF vs a monolith vs a partially containerised deployment</h1>",
        f"<p>Plan: <code>{html.escape(str(report['plan']))}</code>; machine: {html.escape(str(report['machine']))}</p>",
        "<p>Reading the CPU column: RSCF's figure is every stack process (Kafka, Flink, registry, S3, "
        "Redis, Prometheus, the worker), idle work and other jobs on the cluster included; a baseline's is its own "
        "processes only.</p><table><tr>" + "".join(f"<th>{c}</th>" for c, _ in COLUMNS) + f"</tr>{rows}</table>",
    ]
    if cells := spread_cells(runs):
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in cells)
        parts.append("<h2>Spread over the repeats: median [min-max]</h2><table><tr>" + "".join(
            f"<th>{c}</th>" for c in (*SPREAD_HEAD, *(n for n, _ in SPREAD_FIGURES))) + f"</tr>{rows}</table>")
    if discussion:
        parts.append(f"<h2>Discussion</h2><p>{html.escape(discussion)}</p>")
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        parts += [f"<h2>{scenario}: latency of each answered request over time (x: not answered)</h2>",
                  latency_over_time(scenario, series),
                  f"<h3>{scenario}: latency distribution</h3>", distribution(scenario, series),
                  f"<h3>{scenario}: live model replicas</h3>", replicas_over_time(scenario, series)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path
