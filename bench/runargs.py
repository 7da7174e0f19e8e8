"""The command line of the side-by-side scripts (compare.py, guided.py): checkpoint, output folder, levels."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RunArgs:
    model_dir: Path
    out: Path
    levels: list[int]


def parse_run_args(description: str, default_out: str) -> RunArgs:
    """Parse ``--model`` (default: the tiny checkpoint, written fresh to OUT/tiny), ``--out`` (created) and
    ``--concurrency``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", help="checkpoint dir (default: the tiny checkpoint, written to OUT/tiny)")
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="levels of the sweep")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model:
        return RunArgs(Path(args.model), out, args.concurrency)
    from engine.offline.tiny import make_tiny

    return RunArgs(make_tiny(out / "tiny"), out, args.concurrency)
