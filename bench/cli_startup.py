"""CLI start-up: wall time of ``socialcrm queue`` on a demo database, over several runs.

    python bench/cli_startup.py [--runs 10] [--dir DEMO_DIR] [--target-s 0.4]

Builds a demo database first (``socialcrm demo --messages 200`` in a temporary folder) unless
``--dir`` names one that exists, runs ``socialcrm queue`` once to warm the file cache and write
the bytecode, then times ``--runs`` runs, each a fresh process as a person at a terminal starts
it. Prints the median and 90th percentile wall time, and whether the median meets the target,
and the median CPU time (user + system) of a run, which another load on the machine changes
far less than the wall time.
``PYTHONDONTWRITEBYTECODE`` is removed from the runs' environment: without cached bytecode every
run compiles socialcrm's modules again, which is not how an installed copy runs.
``python -X importtime -m socialcrm queue`` shows where the remaining time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "socialcrm"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=None, help="an existing demo folder to reuse")
    ap.add_argument("--target-s", type=float, default=0.4)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    made = None
    folder: Path = args.dir
    if folder is None or not (folder / "config.yaml").exists():
        made = Path(tempfile.mkdtemp(prefix="socialcrm-bench-"))
        folder = made / "demo"
        print(f"building a demo database in {folder} ...", flush=True)
        subprocess.run(
            [*CLI, "demo", "--dir", str(folder), "--messages", "200"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    command = [*CLI, "-c", str(folder / "config.yaml"), "queue"]
    try:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)  # warm-up
        walls = []
        cpus = []
        for _ in range(args.runs):
            used = _children_cpu()
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - started)
            cpus.append(_children_cpu() - used)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    walls.sort()
    median = statistics.median(walls)
    p90 = walls[min(len(walls) - 1, round(0.9 * (len(walls) - 1)))]
    print(
        f"socialcrm queue, {len(walls)} runs: median {median:.3f} s, p90 {p90:.3f} s "
        f"(CPU median {statistics.median(cpus):.3f} s)"
    )
    print(
        f"target {args.target_s:.2f} s: {'met' if median < args.target_s else 'NOT met'} "
        f"(min {walls[0]:.3f} s, max {walls[-1]:.3f} s; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)"
    )


def _children_cpu() -> float:
    """User and system CPU seconds of every finished child process so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


if __name__ == "__main__":
    main()
