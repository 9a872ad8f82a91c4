#!/usr/bin/env python3
"""Renders the panels of deploy/grafana/kvasir.json to one PNG, from a live Prometheus.

Each panel's queries run through Prometheus' query_range API over [--start, --end], and matplotlib
draws them in the dashboard's grid (rows of panels, same titles, legends and units), so the
picture in docs/observability.md shows what Grafana would show for that run.

  render.py --prometheus http://127.0.0.1:9090 --start UNIX --end UNIX --output kvasir.png

matplotlib: PYTHONPATH=.deps/deploy/python (scripts/install-deploy-tools.sh installs it there).
"""
import argparse
import json
import math
import os
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".deps", "deploy", "python"))

UNIT_SCALE = {  # unit -> (divisor, axis label)
    "s": (1.0, "seconds"), "reqps": (1.0, "requests/s"), "ops": (1.0, "per second"),
    "percentunit": (0.01, "percent"), "bytes": (2**20, "MiB"), "Bps": (1e6, "MB/s"), "short": (1.0, ""),
}


def query_range(base, expr, start, end, step):
    url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, default=time.time())
    ap.add_argument("--step", type=float, default=1.0)
    ap.add_argument("--rate-interval", default="15s", help="what $__rate_interval becomes")
    ap.add_argument("--dashboard", default=os.path.join(HERE, "kvasir.json"))
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dash = json.load(open(args.dashboard))
    rows, current = [], None
    for p in dash["panels"]:
        if p["type"] == "row":
            current = (p["title"], [])
            rows.append(current)
        elif current is not None:
            current[1].append(p)
    cols = max(len(ps) for _, ps in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(5.2 * cols, 3.1 * len(rows)), squeeze=False)
    for r, (row_title, panels) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(panels):
                ax.axis("off")
                continue
            panel = panels[c]
            unit = panel["fieldConfig"]["defaults"].get("unit", "short")
            scale, label = UNIT_SCALE.get(unit, (1.0, unit))
            drawn = 0
            for t in panel["targets"]:
                expr = t["expr"].replace("$__rate_interval", args.rate_interval)
                for series in query_range(args.prometheus, expr, args.start, args.end, args.step):
                    xs = [float(x) - args.start for x, _ in series["values"]]
                    ys = [float(y) / scale for _, y in series["values"]]
                    if all(math.isnan(y) for y in ys):
                        continue
                    ax.plot(xs, ys, linewidth=1.2, label=legend(t.get("legendFormat", ""), series["metric"]))
                    drawn += 1
            ax.set_title(f"{row_title}: {panel['title']}", fontsize=9)
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=6, loc="upper left")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        axes[r][0].set_xlabel("seconds since start", fontsize=8)
    fig.suptitle(f"{dash['title']} dashboard ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(args.end))})",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(args.output, dpi=80)
    print(f"render.py: wrote {args.output}")


if __name__ == "__main__":
    main()
