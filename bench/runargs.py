"""The command line of the side-by-side scripts (compare.py, guided.py): checkpoint, output folder, levels."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.offline.tiny import TinySpec


@dataclass(frozen=True, slots=True)
class RunArgs:
    model_dir: Path
    out: Path
    levels: list[int]


def parse_run_args(description: str, default_out: str, spec: TinySpec | None = None,
                   levels: list[int] | None = None) -> RunArgs:
    """Parse ``--model`` (default: the tiny checkpoint of ``spec``, written fresh to OUT/tiny), ``--out``
    (created) and ``--concurrency`` (default ``levels``, else 1 8 32)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", help="checkpoint dir (default: the tiny checkpoint, written to OUT/tiny)")
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--concurrency", type=int, nargs="+", default=levels or [1, 8, 32], help="levels")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model:
        return RunArgs(Path(args.model), out, args.concurrency)
    from engine.offline.tiny import TinySpec, make_tiny

    return RunArgs(make_tiny(out / "tiny", spec or TinySpec()), out, args.concurrency)
