"""What the seed-summary scripts of docs/scripts share: mean and spread over seeds, and their command line
(a pipeline's output_dir in, JSON printed and, with ``--out``, written)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path


def mean_sd(values: list[float]) -> dict:
    """Mean and sample standard deviation (None for one value) over the seeds, with the values."""
    return {"mean": round(statistics.mean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None, "values": values}


def run_command(description: str, example_root: str, summarize: Callable[[Path], dict]) -> None:
    """Parse ``ROOT [--out FILE]``, summarize ROOT, print the JSON and write it to FILE."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("root", type=Path, help=f"the pipeline's output_dir ({example_root})")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    text = json.dumps(summarize(args.root), indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
