"""The README's first command: `socialcrm demo` runs the whole product with no accounts."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from socialcrm.cli import main


@pytest.mark.timeout(300)
def test_demo_runs_end_to_end_and_leaves_a_store_to_explore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOCIALCRM_USER", "tester")
    cli = CliRunner()
    out = cli.invoke(main, ["demo", "--dir", "demo", "--messages", "200"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    text = out.output
    stored = re.search(r"^(\d+) messages stored:", text, re.M)
    assert stored is not None and int(stored.group(1)) > 150, text
    for channel in ("x", "mastodon", "reddit", "email"):
        assert re.search(rf"^  {channel} +\d+ ", text, re.M), f"no {channel} line"
    summary = re.search(r"^(\d+) tickets opened, (\d+) drafts waiting", text, re.M)
    assert summary is not None and int(summary.group(1)) > 0 and int(summary.group(2)) > 0
    assert "== The approval queue ==" in text and "Look around:" in text
    cards = re.search(r"^(\d+) approval cards .* posted to #approvals", text, re.M)
    assert cards is not None and int(cards.group(1)) == int(summary.group(2)), "a card a draft"

    # What it tells the newcomer to try next works on what it left behind.
    config = str(tmp_path / "demo" / "config.yaml")
    queue = cli.invoke(main, ["-c", config, "queue"], catch_exceptions=False)
    assert queue.exit_code == 0 and "#" in queue.output
    # The default end is the last whole hour; this asks for everything up to now.
    end = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    report = cli.invoke(
        main,
        ["-c", config, "report", "--period", "1d", "--end", end, "--format", "json"],
        catch_exceptions=False,
    )
    assert report.exit_code == 0, report.output
    figures = json.loads(report.output)
    # Every message the demo stored happened in the last few hours; spam is counted apart.
    counted = figures["overall"]["current"]["total"] + figures["ignored"]["current"]
    assert counted == int(stored.group(1))
    # None of it is dated in the future, whatever the number of messages asked for.
    with sqlite3.connect(tmp_path / "demo" / "socialcrm.db") as db:
        (newest,) = db.execute("SELECT max(created_at) FROM message").fetchone()
    assert datetime.fromisoformat(newest).replace(tzinfo=UTC) <= datetime.now(UTC)
