"""Per-request records and their summary: rates over the level's wall time, latency percentiles."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Record:
    """What one streamed request took; times in seconds from its start."""

    ok: bool = False
    error: str | None = None
    ttft: float | None = None  # first content (text or image) chunk
    e2e: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)  # gaps between consecutive text chunks
    png: list[float] = field(default_factory=list)  # request start to each image's chunk


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {f"p{p}": round(float(np.percentile(values, p)), 5) for p in PERCENTILES}


def summarize(records: list[Record], duration_s: float) -> dict:
    """Throughput over ``duration_s`` (first request sent to last answer) and latency percentiles."""
    ok = [r for r in records if r.ok]
    images = sum(len(r.png) for r in ok)
    errors = sorted({r.error for r in records if r.error})
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": errors[:5],
        "duration_s": round(duration_s, 3),
        "requests_per_s": round(len(ok) / duration_s, 4),
        "images_per_s": round(images / duration_s, 4),
        "output_tokens_per_s": round(sum(r.output_tokens for r in ok) / duration_s, 2),
        "ttft_s": percentiles([r.ttft for r in ok if r.ttft is not None]),
        "itl_s": percentiles([g for r in ok for g in r.itl]),
        "e2e_s": percentiles([r.e2e for r in ok]),
        "request_to_png_s": percentiles([t for r in ok for t in r.png]),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to three places; None where either figure is missing (or zero)."""
    return round(a / b, 3) if a and b else None
