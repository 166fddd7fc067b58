#!/usr/bin/env python3
"""bench/report.py RESULTS_DIR: turns bench/run's raw.jsonl into table.md
(the median over repetitions of each figure, and its ratio to the best
proxy's) and charts/*.svg (one grouped bar chart per headline figure).

Standard library only, SVG written by hand: bench/run already needs
python3, and a chart of a few bars does not justify a plotting crate and
its build on every machine that runs the benchmark."""

import json
import os
import statistics
import sys
from html import escape

PROXIES = ["wsgate", "nginx", "haproxy", "caddy"]
BASELINE = "baseline"
MODES = ["plain", "tls"]

# (scenario, path in the JSON result, label, unit, lower is better, is a proxy CPU figure)
FIGURES = [
    ("handshakes", "cpu_us_per_handshake", "CPU per handshake", "µs", True, True),
    ("handshakes", "handshakes_per_s", "handshakes per second", "/s", False, False),
    ("handshakes", "latency.p50_us", "handshake latency p50", "µs", True, False),
    ("handshakes", "latency.p99_us", "handshake latency p99", "µs", True, False),
    ("echo-open", "cpu_us_per_msg", "CPU per echoed message (open loop)", "µs", True, True),
    ("echo-open", "rtt.p50_us", "open-loop round trip p50", "µs", True, False),
    ("echo-open", "rtt.p99_us", "open-loop round trip p99", "µs", True, False),
    ("echo-open", "rtt.p999_us", "open-loop round trip p99.9", "µs", True, False),
    ("echo-open", "lost", "open-loop messages lost", "", True, False),
    ("echo-closed", "cpu_us_per_msg", "CPU per echoed message (closed loop)", "µs", True, True),
    ("echo-closed", "msgs_per_s", "closed-loop messages per second", "/s", False, False),
    ("echo-closed", "rtt.p99_us", "closed-loop round trip p99", "µs", True, False),
    ("echo-closed", "rtt.max_us", "closed-loop round trip max", "µs", True, False),
    ("echo-closed", "fairness.min_msgs", "closed loop: fewest messages on a connection", "", False, False),
    ("echo-closed", "fairness.jain", "closed loop: Jain fairness index", "", False, False),
    ("throughput", "cpu_ms_per_gb", "CPU per GB echoed (64 KiB messages)", "ms", True, True),
    ("throughput", "mb_per_s", "throughput echoed", "MB/s", False, False),
    ("broadcast", "cpu_us_per_msg", "CPU per broadcast message delivered", "µs", True, True),
    ("broadcast", "latency.p99_us", "broadcast delivery p99", "µs", True, False),
    ("broadcast", "lost", "broadcast messages lost", "", True, False),
    ("idle", "rss_bytes_per_conn", "memory per idle connection", "bytes", True, True),
    ("idle", "reached", "idle connections reached", "", False, False),
    ("idle", "answered", "idle connections that answered", "", False, False),
]

# The charts: the headline (CPU per unit of work, memory) and the rates beside it.
CHARTS = [
    ("handshakes", "cpu_us_per_handshake"),
    ("echo-open", "cpu_us_per_msg"),
    ("echo-open", "rtt.p99_us"),
    ("echo-closed", "msgs_per_s"),
    ("echo-closed", "rtt.p99_us"),
    ("throughput", "cpu_ms_per_gb"),
    ("broadcast", "latency.p99_us"),
    ("idle", "rss_bytes_per_conn"),
]


def get(obj, path):
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj if isinstance(obj, (int, float)) else None


def load(path):
    runs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    return runs


def medians(runs):
    """{(scenario, key, proxy, mode): median over repetitions}"""
    samples = {}
    for run in runs:
        for scenario, key, *_ in FIGURES:
            if run.get("mode") != scenario:
                continue
            value = get(run, key)
            if value is not None:
                samples.setdefault((scenario, key, run.get("proxy"), run.get("tls")), []).append(value)
    return {k: statistics.median(v) for k, v in samples.items()}


def fmt(value):
    if value is None:
        return "—"
    if value == int(value) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def best_of(values, lower):
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if lower else max(present)


def table(med, mode):
    cols = [BASELINE] + PROXIES if mode == "plain" else PROXIES
    head = "| figure | " + " | ".join(
        "backend alone" if c == BASELINE else c for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for scenario, key, label, unit, lower, cpu in FIGURES:
        values = {p: med.get((scenario, key, p, mode)) for p in PROXIES}
        if all(v is None for v in values.values()):
            continue
        best = best_of(values.values(), lower)
        cells = []
        for c in cols:
            if c == BASELINE:
                # The baseline's CPU is the backend's, not a proxy's: not comparable.
                v = None if cpu else med.get((scenario, key, BASELINE, "plain"))
                cells.append(fmt(v))
                continue
            v = values[c]
            if v is None:
                cells.append("—")
            elif best not in (None, 0):
                cells.append(f"{fmt(v)} ({v / best:.2f}x)")
            else:
                cells.append(fmt(v))
        arrow = "lower is better" if lower else "higher is better"
        lines.append(f"| {label}{' (' + unit + ')' if unit else ''}, {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLORS = {"wsgate": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#d62728", "caddy": "#9467bd",
          BASELINE: "#7f7f7f"}


def chart(med, scenario, key):
    """Grouped bars: one group per mode, one bar per proxy (the baseline in plain)."""
    label, unit, cpu = next((l, u, c) for s, k, l, u, _, c in FIGURES if s == scenario and k == key)
    groups = []
    for mode in MODES:
        names = ([BASELINE] if mode == "plain" and not cpu else []) + PROXIES
        bars = [(p, med.get((scenario, key, p, mode))) for p in names]
        bars = [(p, v) for p, v in bars if v is not None]
        if bars:
            groups.append((mode, bars))
    if not groups:
        return None
    top = max(v for _, bars in groups for _, v in bars) or 1.0
    width, height, left, bottom, bar = 640, 320, 60, 40, 36
    plot_h = height - bottom - 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
           f'{escape(label)}{" (" + escape(unit) + ")" if unit else ""}</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="black"/>']
    x = left + 20
    for mode, bars in groups:
        start = x
        for name, value in bars:
            h = plot_h * value / top
            y = height - bottom - h
            out.append(f'<rect x="{x}" y="{y:.1f}" width="{bar - 4}" height="{h:.1f}" fill="{COLORS[name]}"/>')
            out.append(f'<text x="{x + (bar - 4) / 2}" y="{y - 4:.1f}" text-anchor="middle" font-size="10">'
                       f'{escape(fmt(value))}</text>')
            out.append(f'<text x="{x + (bar - 4) / 2}" y="{height - bottom + 14}" text-anchor="middle" '
                       f'font-size="10">{escape(name if name != BASELINE else "backend")}</text>')
            x += bar
        out.append(f'<text x="{(start + x - 4) / 2}" y="{height - bottom + 30}" text-anchor="middle" '
                   f'font-weight="bold">{mode}</text>')
        x += bar
    out.append("</svg>")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULTS_DIR")
    out = sys.argv[1]
    med = medians(load(os.path.join(out, "raw.jsonl")))
    versions = ""
    vpath = os.path.join(out, "versions.txt")
    if os.path.exists(vpath):
        with open(vpath, encoding="utf-8") as f:
            versions = f.read()
    parts = ["# wsgate against nginx, HAProxy and Caddy", "",
             "Medians over the repetitions; in brackets the ratio to the best proxy "
             "on that figure (1.00x: the best). CPU is the proxy's own (user + system), "
             "per unit of work; the proxy on one core, the load generator and backend on the other.", "",
             "```", versions.strip(), "```", ""]
    for mode in MODES:
        parts += [f"## {mode}", "", table(med, mode), ""]
    os.makedirs(os.path.join(out, "charts"), exist_ok=True)
    charts = []
    for scenario, key in CHARTS:
        svg = chart(med, scenario, key)
        if svg:
            name = f"{scenario}-{key.replace('.', '-')}.svg"
            with open(os.path.join(out, "charts", name), "w", encoding="utf-8") as f:
                f.write(svg)
            charts.append(name)
    parts += ["## Charts", ""] + [f"![{c}](charts/{c})" for c in charts] + [""]
    text = "\n".join(parts)
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
