"""Soak: the daemon polls the sandbox with injected faults for a while; it must stay up, store
every served message exactly once, and keep its memory flat.

    python bench/soak.py [--minutes 10] [--faults 0.2] [--rate 20] [--database URL]

Prints the daemon's resident memory at the start and the end, how many messages were served
and stored, and whether any was lost or stored twice. Exit status 1 if the checks fail.
The test suite runs a short version (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_process import print_figures, soak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--faults", type=float, default=0.2, help="share of requests that misbehave")
    ap.add_argument("--rate", type=float, default=20.0, help="mentions released per second")
    ap.add_argument("--database", default=None, help="URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database = args.database or f"sqlite+aiosqlite:///{Path(tmp) / 'soak.db'}"
        r = asyncio.run(
            soak(Path(tmp), database, minutes=args.minutes, faults=args.faults, rate=args.rate)
        )
    sys.exit(print_figures(r))


if __name__ == "__main__":
    main()
