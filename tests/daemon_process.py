"""Running ``socialcrm run`` as a real process, for kill and soak tests (and bench scripts)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml


def write_config(path: Path, database: str, sources: list[dict[str, Any]], **extra: Any) -> Path:
    """A config file for a daemon under test."""
    path.write_text(
        yaml.safe_dump({"database": database, "sources": sources, **extra}, sort_keys=False),
        encoding="utf-8",
    )
    return path


class DaemonProcess:
    """``socialcrm run -c CONFIG`` in a child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the daemon (HTTP on a free port; it is not needed here)."""
        out = self.log.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "socialcrm",
                "-c",
                str(self.config),
                "run",
                "--port",
                "0",
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            out.close()

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no last transaction, like a power cut."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)
