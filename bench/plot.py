"""PNG plot of a load generator report: throughput and latency against concurrency, one line per workload."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

_PANELS = (  # (title, figure key, percentile or None)
    ("output tokens/s", "output_tokens_per_s", None),
    ("requests/s", "requests_per_s", None),
    ("images/s", "images_per_s", None),
    ("TTFT p50 (s)", "ttft_s", "p50"),
    ("inter-token latency p99 (s)", "itl_s", "p99"),
    ("end-to-end p50 (s)", "e2e_s", "p50"),
)


def _value(level: dict, key: str, pct: str | None) -> float | None:
    v = level[key]
    return v if pct is None else (v or {}).get(pct)


def plot_report(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (title, key, pct) in zip(axes.flat, _PANELS):
        for k, (name, levels) in enumerate(report["workloads"].items()):
            points = [(int(c), _value(lv, key, pct)) for c, lv in levels.items()]
            points = [(c, v) for c, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=name, color=f"C{k}")  # same colour in every panel
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"{report['model']} at {report['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
