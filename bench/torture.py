#!/usr/bin/env python3
"""bbproxy torture run (issue #9 items 1-3): floods, hostile input and faults, with figures.

    .venv/bin/python bench/torture.py --short     # CI form, < 90 s
    .venv/bin/python bench/torture.py --full      # < 10 min

The command line of files/bbproxy/tests/torture/core.py (what it starts and runs: its docstring).
Writes bench/results/torture-MODE-LOOP-TIMESTAMP.{json,md} and torture-latest-MODE-LOOP.{json,md},
and prints the Markdown. Exit status 0 when nothing was lost and the proxy still serves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _path  # noqa: F401  (files/bbproxy on sys.path)
from tests.torture.core import FULL, SHORT, markdown, run, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", action="store_true", help="CI form, < 90 s (default)")
    group.add_argument("--full", action="store_true", help="issue #9 scale, < 10 min")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the proxy's event loop"
    )
    parser.add_argument("--only", choices=("floods", "hostile", "faults"), action="append")
    parser.add_argument("--no-write", action="store_true", help="print only, write no result files")
    args = parser.parse_args(argv)
    scale = FULL if args.full else SHORT
    with tempfile.TemporaryDirectory(prefix="bbproxy-torture-") as tmp:
        report = run(
            scale,
            Path(tmp),
            seed=args.seed,
            scenarios=tuple(args.only or ("floods", "hostile", "faults")),
            loop=args.loop,
        )
    print(markdown(report))
    if not args.no_write:
        print(f"written: {write_report(report)}")
    return 0 if report["lost"] == 0 and not report["findings"] else 1


if __name__ == "__main__":
    sys.exit(main())
