"""Kill loop: SIGKILL the daemon many times at random moments while the sandbox feeds it;
after a last clean run every message the sandbox served is stored exactly once.

    python bench/kill_loop.py [--kills 40] [--seed 1] [--rate 20] [--database URL]

Exit status 1 if a message was lost or stored twice. The test suite runs a short version
(tests/test_kill.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_process import kill_loop, print_figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=20.0, help="mentions released per second")
    ap.add_argument("--database", default=None, help="URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database = args.database or f"sqlite+aiosqlite:///{Path(tmp) / 'kill.db'}"
        r = asyncio.run(
            kill_loop(Path(tmp), database, kills=args.kills, seed=args.seed, rate=args.rate)
        )
    sys.exit(print_figures(r))


if __name__ == "__main__":
    main()
