"""Write generated brand mentions as JSON Lines, one ``InboundMessage`` per line.

    python bench/generate_mentions.py --count 5000 --seed 7 -o mentions.jsonl
    python bench/generate_mentions.py --count 300 --seed 7 -o socialcrm/examples/mentions.jsonl \\
        --customers socialcrm/examples/customers.csv --customer-count 30

The same arguments always give the same bytes. ``-o -`` (the default) writes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

try:
    from socialcrm.sandbox.traffic import CUSTOMER_COLUMNS, DEFAULT_START, TrafficGenerator
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from socialcrm.sandbox.traffic import CUSTOMER_COLUMNS, DEFAULT_START, TrafficGenerator


def _start(value: str) -> datetime:
    when = datetime.fromisoformat(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="messages to write")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("-o", "--output", default="-", help="JSON Lines file, '-' for stdout")
    parser.add_argument("--brand", default="Acme")
    parser.add_argument("--brand-handle", default="acme")
    parser.add_argument(
        "--start", type=_start, default=DEFAULT_START, help="ISO time of the first gap's start"
    )
    parser.add_argument("--mean-gap-s", type=float, default=30.0)
    parser.add_argument("--customers", help="also write the known-customers CSV here")
    parser.add_argument("--customer-count", type=int, default=30)
    return parser


def _write_messages(gen: TrafficGenerator, count: int, out: TextIO) -> None:
    for message in gen.messages(count):
        out.write(message.model_dump_json())
        out.write("\n")


def main(argv: list[str] | None = None) -> int:
    """Generate the mentions (and optionally the matching customers) and report the time taken."""
    args = _parser().parse_args(argv)
    gen = TrafficGenerator(
        args.seed,
        brand=args.brand,
        brand_handle=args.brand_handle,
        start=args.start,
        mean_gap_s=args.mean_gap_s,
    )
    began = time.perf_counter()
    if args.output == "-":
        _write_messages(gen, args.count, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8", newline="\n") as out:
            _write_messages(gen, args.count, out)
    elapsed_s = time.perf_counter() - began
    print(f"wrote {args.count} messages in {elapsed_s:.2f} s", file=sys.stderr)
    if args.customers:
        rows = gen.customers(args.customer_count, among=args.count)
        with open(args.customers, "w", encoding="utf-8", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=CUSTOMER_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} customers to {args.customers}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
