#!/usr/bin/env python3
"""Plots the CSV of benches/relay-vs-postfix.sh: end-to-end msg/s and CPU
seconds per message by sessions, Postfix against mailq-relay (median of the
runs, whiskers for min and max).

    python3 benches/relay-vs-postfix-plot.py /tmp/relay-vs-postfix.csv docs/relay-vs-postfix.png
(needs matplotlib: pip install matplotlib)
"""
import csv
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
rows = [r for r in csv.DictReader(open(src)) if r["note"] in ("", '""')]
e2e = defaultdict(list)
cpu = defaultdict(list)
for r in rows:
    key = (r["system"], int(r["sessions"]))
    e2e[key].append(float(r["e2e_msg_s"]))
    cpu[key].append(1000 * float(r["cpu_server_s"]) / int(r["messages"]))

systems = ["postfix", "mailq-relay"]
sessions = sorted({s for (_, s) in e2e})
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
width = 0.38
for i, system in enumerate(systems):
    xs = [j + (i - 0.5) * width for j in range(len(sessions))]
    for ax, data, fmt in ((a, e2e, "{:.0f}"), (b, cpu, "{:.2f}")):
        vals = [data.get((system, s), [0]) for s in sessions]
        med = [statistics.median(v) for v in vals]
        err = [[m - min(v) for m, v in zip(med, vals)], [max(v) - m for m, v in zip(med, vals)]]
        bars = ax.bar(xs, med, width, yerr=err, capsize=3, label=system)
        for x, m in zip(xs, med):
            ax.annotate(fmt.format(m), (x, m), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 3), textcoords="offset points")
for ax, title in ((a, "end-to-end msg/s (higher is better)"),
                  (b, "server CPU ms per message (lower is better)")):
    ax.set_xticks(range(len(sessions)))
    ax.set_xticklabels([f"{s} session{'s' if s > 1 else ''}" for s in sessions])
    ax.set_title(title)
    ax.legend()
fig.suptitle("smtp-source -l 4096 -r 3 → server → smtp-sink, loopback, 2 cores (median of runs, min–max)")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
