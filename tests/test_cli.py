"""The command line, run in-process against a real SQLite database."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from socialcrm.cli import main
from socialcrm.connector import Author, InboundMessage


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOCIALCRM_USER", "tester")
    return CliRunner()


def run(cli: CliRunner, *args: str, code: int = 0) -> Result:
    result = cli.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def soon() -> str:
    """A report end just after now (the default end is the last whole hour or day)."""
    return (datetime.now(UTC) + timedelta(minutes=1)).isoformat()


def jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mention(ext: str, text: str, user: str = "u1", handle: str = "jane") -> str:
    return InboundMessage(
        channel="x", external_id=ext, text=text, author=Author(user_id=user, handle=handle)
    ).model_dump_json()


def test_init_writes_config_and_database(cli: CliRunner, tmp_path: Path) -> None:
    out = run(cli, "init").output
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "socialcrm.db").exists()
    assert "database ready" in out
    again = run(cli, "init", code=2)
    assert again.output.strip().endswith("config.yaml exists; use --force to overwrite it")
    assert len(again.output.strip().splitlines()) == 1


def test_config_check(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    assert "config OK" in run(cli, "config", "check").output
    (tmp_path / "config.yaml").write_text("tickets:\n  thread_window: soon\n")
    bad = run(cli, "config", "check", code=2)
    assert "config.yaml:2: tickets.thread_window" in bad.output
    assert "Traceback" not in bad.output


def test_ingest_file_with_bad_lines(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    f = jsonl(
        tmp_path / "in.jsonl",
        [
            mention("1", "@acme my order is two weeks late, terrible service"),
            "{not json",
            json.dumps({"channel": "x", "external_id": "2"}),  # no text, no author
            mention("3", "@acme how do I change my address?", "u2", "bob"),
            "",
        ],
    )
    # Exit status 3: done, with lines left out (in quarantine), so a script can tell.
    out = run(cli, "ingest", str(f), "--json", code=3).output
    summary = json.loads(out)
    assert summary["stored"] == 2 and summary["quarantined"] == 2
    listing = run(cli, "quarantine", "list").output
    assert "line 2:" in listing and "line 3:" in listing
    again = json.loads(run(cli, "ingest", str(f), "--json", code=3).output)
    assert again["stored"] == 0 and again["duplicates"] == 2
    # (A file taken whole exits 0: test_ingest_reads_past_a_byte_order_mark.)


def test_ingest_reads_past_a_byte_order_mark(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    f = tmp_path / "in.jsonl"
    lines = [mention("1", "@acme where is my parcel?"), mention("2", "@acme thanks!")]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    assert f.read_bytes().startswith(b"\xef\xbb\xbf")
    summary = json.loads(run(cli, "ingest", str(f), "--json").output)
    assert summary["stored"] == 2 and summary["quarantined"] == 0


def test_ingest_takes_ids_written_as_numbers(cli: CliRunner, tmp_path: Path) -> None:
    """Exports often write tweet and user ids as JSON numbers: they are the ids' digits; a
    true or a fraction is no id and the line is quarantined."""
    run(cli, "init")
    f = tmp_path / "in.jsonl"
    big = 1712345678901234567  # past what a double holds exactly
    line = {"channel": "x", "text": "@acme where is my parcel?", "in_reply_to": 7}
    lines = [
        {**line, "external_id": big, "author": {"user_id": 42, "handle": "jane"}},
        {**line, "external_id": True, "author": {"handle": "joe"}},
        {**line, "external_id": 1.5, "author": {"handle": "joe"}},
    ]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    summary = json.loads(run(cli, "ingest", str(f), "--json", code=3).output)
    assert summary["stored"] == 1 and summary["quarantined"] == 2
    with sqlite3.connect(tmp_path / "socialcrm.db") as db:
        stored = db.execute("select external_id, in_reply_to from message").fetchall()
    assert stored == [(str(big), "7")]


def test_ingest_missing_file_is_one_clear_line(cli: CliRunner) -> None:
    res = run(cli, "ingest", "nope.jsonl", code=2)
    assert "does not exist" in res.output


def test_queue_approve_edit_reject(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    f = jsonl(
        tmp_path / "in.jsonl",
        [
            mention("1", "@acme my order is two weeks late, terrible service"),
            mention("2", "@acme the app keeps crashing, useless", "u2", "bob"),
            mention("3", "@acme where is my refund? awful", "u3", "cy"),
        ],
    )
    run(cli, "ingest", str(f))
    queue = run(cli, "queue").output
    assert "3 drafts awaiting approval" in queue
    assert "@jane" in run(cli, "show", "1").output
    assert "approved by tester" in run(cli, "approve", "1").output
    refused = run(cli, "approve", "1", code=2)
    assert "reply #1 is approved, not a draft; nothing changed" in refused.output
    assert "edited and approved" in run(cli, "edit", "2", "@bob", "We", "are", "on", "it.").output
    assert "rejected" in run(cli, "reject", "3", "duplicate", "of", "ticket", "2").output
    assert "queue is empty" in run(cli, "queue").output
    ticket = run(cli, "tickets", "show", "2").output
    assert "@bob We are on it." in ticket
    assert "no reply #99" in run(cli, "reject", "99", "x", code=2).output


def test_edit_refuses_text_too_long_for_x(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    run(
        cli,
        "ingest",
        str(jsonl(tmp_path / "a.jsonl", [mention("1", "@acme my order is late, terrible")])),
    )
    res = run(cli, "edit", "1", "x" * 300, code=2)
    assert "too long for x" in res.output
    assert "1 draft awaiting approval" in run(cli, "queue").output


def test_customers_import_show_merge(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    csv = tmp_path / "c.csv"
    csv.write_text(
        "name,email,tier,lifetime_value,tags,x_handle\n"
        "Vera Vip,vera@example.com,vip,12000,loyal;press,vera\n"
        "Olaf,olaf@example.com,gold,500,,\n"
    )
    assert "2 customers created" in run(cli, "customers", "import", str(csv)).output
    shown = run(cli, "customers", "show", "@vera").output
    assert "Vera Vip" in shown and "vip" in shown and "loyal" in shown
    assert "Olaf" in run(cli, "customers", "show", "olaf@example.com").output
    out = run(cli, "customers", "merge", "vera@example.com", "olaf@example.com").output
    assert "merged customer #2 into #1" in out
    assert "olaf@example.com" in run(cli, "customers", "show", "1").output


def test_customers_import_bad_csv_imports_nothing(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    csv = tmp_path / "c.csv"
    csv.write_text(
        "name,email,tier,lifetime_value\nA,a@example.com,vip,100\nB,not-an-email,diamond,-5\n"
    )
    res = run(cli, "customers", "import", str(csv), code=2)
    assert "line 3: email 'not-an-email' is not an address" in res.output
    assert "line 3: tier must be one of standard, gold, vip, got 'diamond'" in res.output
    assert "line 3: lifetime_value" in res.output
    assert "no customer matches" in run(cli, "customers", "show", "a@example.com", code=2).output


def test_rules_check_and_test(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    assert "rules OK" in run(cli, "rules", "check").output
    out = run(cli, "rules", "test").output
    assert out.strip().endswith("0 failed")
    (tmp_path / "mine.yaml").write_text(
        "rules:\n  - name: x\n    when: {bogus: 1}\n    then: [ignore]\n"
    )
    (tmp_path / "config.yaml").write_text("rules: [mine.yaml]\n")
    bad = run(cli, "rules", "check", code=2)
    assert f"{tmp_path / 'mine.yaml'}:3" in bad.output


def test_rules_explain_shows_each_rule_and_what_it_found(cli: CliRunner, tmp_path: Path) -> None:
    """An operator asks why a message got what it got: the shipped pack's rules that matched,
    with the file, line and words of each condition that held; no database is made for it."""
    out = run(
        cli,
        "rules",
        "explain",
        "@acme still waiting for my order, 3 weeks now. Thanks for nothing",
        "--at",
        "2026-03-04 11:00",
    ).output
    assert "Model:     no database yet: the rules decide alone" in out
    lines = out.splitlines()
    complaint = next(
        i for i, line in enumerate(lines) if line.split()[:2] == ["MATCH", "complaint"]
    )
    assert "default.yaml:" in lines[complaint] and "open ticket" in lines[complaint]
    held = lines[
        complaint + 1 : next(
            i for i in range(complaint + 1, len(lines)) if not lines[i].startswith("          ")
        )
    ]
    assert any("phrases" in line and "'thanks for nothing'" in line for line in held)
    # `praise` found its thanks, and the complaint words that kept it from matching.
    praise = next(line for line in lines if line.split()[:2] == ["no", "praise"])
    assert praise
    assert "Decision:  ticket" in out and "intent complaint" in out
    assert "did not match and found nothing in the text" in out
    assert "VADER read: 'still waiting" in out  # the brand's handle is not read
    assert not list(tmp_path.glob("*.db"))
    # A stored message needs the database: where it would be, and how to make it, is said.
    missing = run(cli, "rules", "explain", "--message", "1", code=2).output
    assert f"no database at {tmp_path / 'socialcrm.db'}, and no config.yaml here" in missing
    assert "`socialcrm init` makes both" in missing and not list(tmp_path.glob("*.db"))
    # Found by search, `complaint` (for messages sent to us) does not match; --all lists every
    # rule.
    out = run(cli, "rules", "explain", "still waiting for my order", "--public", "--all").output
    assert "found by search" in out and "no    complaint" in out and "--all lists" not in out
    assert "no    vip" not in out and "angry-vip" in out
    assert (
        "Invalid value for '--at'"
        in run(cli, "rules", "explain", "x", "--at", "soon", code=2).output
    )
    # A database on another schema version is read, never upgraded: the rules decide alone.
    with sqlite3.connect(tmp_path / "socialcrm.db") as db:
        db.execute("create table alembic_version (version_num varchar(32) not null)")
        db.execute("insert into alembic_version values ('0001')")
    out = run(cli, "rules", "explain", "hello").output
    assert "the database is at schema 0001, not this version's" in out
    with sqlite3.connect(tmp_path / "socialcrm.db") as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [("0001",)]
        assert [t for (t,) in db.execute("select name from sqlite_master")] == ["alembic_version"]


def test_rules_explain_reads_a_stored_message_again_beside_what_was_stored(
    cli: CliRunner, tmp_path: Path
) -> None:
    run(cli, "init")
    first = mention("m1", "@acme my order never arrived, nobody answers")
    later = mention("m2", "@acme still nothing. please help")
    run(cli, "ingest", str(jsonl(tmp_path / "in.jsonl", [first, later])))
    for message_id in ("1", "2"):
        out = run(cli, "rules", "explain", "--message", message_id).output
        stored = next(line for line in out.splitlines() if line.startswith("Stored:"))
        assert stored.startswith(f"Stored:    message #{message_id}: rules ")
        # Read again with the customer as it came in, the rules decide as they did then.
        matched = [line.split()[1] for line in out.splitlines() if line.startswith("  MATCH ")]
        assert stored.split(": rules ", 1)[1].split(" · ")[0] == ", ".join(matched)
        assert "ticket #1" in stored
    assert "first-contact" in run(cli, "rules", "explain", "--message", "1").output
    second = run(cli, "rules", "explain", "--message", "2").output
    assert "MATCH follow-up" in second and "first-contact" not in second
    assert "no inbound message #9" in run(cli, "rules", "explain", "--message", "9", code=2).output
    assert "give a TEXT or --message ID" in run(cli, "rules", "explain", code=2).output
    both = run(cli, "rules", "explain", "hi", "--message", "1", code=2).output
    assert "give a TEXT or --message ID" in both
    # What-if options are for a TEXT: with --message they are refused, not silently ignored.
    out = run(cli, "rules", "explain", "--message", "1", "--channel", "x", "--public", code=2)
    assert "--public, --channel: for a TEXT; --message reads the stored message" in out.output
    assert "--all" not in run(cli, "rules", "explain", "--message", "1", "--all").output


def test_quarantine_retry_stores_a_payload_that_now_parses(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    run(cli, "ingest", str(jsonl(tmp_path / "a.jsonl", ['{"channel": "x"}'])), code=3)
    assert "1 still failing" in run(cli, "quarantine", "retry", code=3).output
    # A person fixes the payload in the store; the retry then stores it.
    import sqlite3

    db = sqlite3.connect(tmp_path / "socialcrm.db")
    db.execute("UPDATE quarantine SET raw = ?", (mention("q1", "@acme hello there"),))
    db.commit()
    db.close()
    assert "1 retried successfully" in run(cli, "quarantine", "retry").output
    assert "quarantine is empty" in run(cli, "quarantine", "list").output


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(main))
def test_every_command_has_help(cli: CliRunner, path: tuple[str, ...]) -> None:
    out = run(cli, *path, "--help").output
    assert "Usage:" in out and len(out.splitlines()) > 3


def test_report_in_every_format(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    f = jsonl(
        tmp_path / "in.jsonl",
        [
            mention("1", "@acme my order is two weeks late, terrible service"),
            mention("2", "@acme <b>love</b> the new app, great work", "u2", "bob"),
        ],
    )
    run(cli, "ingest", str(f))
    md = run(cli, "report", "--period", "1d", "--end", soon()).output
    assert "| Messages | 2 | 0 |" in md
    data = json.loads(
        run(cli, "report", "--period", "1d", "--end", soon(), "--format", "json").output
    )
    assert data["overall"]["current"]["total"] == 2
    assert data["overall"]["current"]["positive"] == data["overall"]["current"]["negative"] == 1
    csv_text = run(cli, "report", "--period", "1d", "--end", soon(), "--format", "csv").output
    assert "headline,messages,all,,2,0,2" in csv_text.splitlines()
    out = run(cli, "report", "--period", "1d", "--end", soon(), "--format", "html", "-o", "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "report written to r.html" in out.output
    assert "<svg" in page and "&lt;b&gt;love&lt;/b&gt;" in page
    # Whole days that ended long ago hold nothing.
    old = json.loads(
        run(cli, "report", "--end", "2020-01-31", "--period", "7d", "--format", "json").output
    )
    assert old["empty"] is True
    assert old["period"]["end"].startswith("2020-02-01T00:00")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--period", "soon"], "--period: expected a duration like \"60s\", got 'soon'"),
        (["--period", "10m"], "--period: a report covers between 1h and 3660d"),
        (["--end", "last tuesday"], "--end: expected YYYY-MM-DD or an ISO time"),
        (["--format", "pdf"], "Invalid value for '--format'"),
    ],
)
def test_report_bad_options_are_one_line(cli: CliRunner, args: list[str], problem: str) -> None:
    run(cli, "init")
    res = run(cli, "report", *args, code=2)
    assert problem in res.output
    assert "Traceback" not in res.output


def test_mute_from_the_command_line(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    config = tmp_path / "config.yaml"
    config.write_text(
        config.read_text()
        + "\nsources:\n  - {name: reviews, type: rss, url: 'https://r.example/f'}\n"
    )
    config.write_text(config.read_text().replace("sources: []\n", ""))
    assert "Source reviews is muted until" in run(cli, "mute", "reviews", "2h").output
    assert "no source named 'nope'" in run(cli, "mute", "nope", "2h", code=2).output
    assert "Source reviews is polled again." in run(cli, "mute", "reviews", "0").output


def test_db_upgrade_creates_then_keeps_the_schema(cli: CliRunner, tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from socialcrm.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    (tmp_path / "config.yaml").write_text("database: sqlite:///fresh.db\n", encoding="utf-8")
    assert run(cli, "db", "upgrade").output.strip() == f"database at schema {head}"
    assert (tmp_path / "fresh.db").exists()
    assert run(cli, "db", "upgrade").output.strip() == f"database at schema {head}"


def test_db_rebuild_rollups_after_messages_were_deleted_in_sql(
    cli: CliRunner, tmp_path: Path
) -> None:
    run(cli, "init")
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)  # in whole rollup slots
    lines = [
        InboundMessage(
            channel="x",
            external_id=str(i),
            text=f"@acme order {i} is late",
            author=Author(user_id="u1", handle="jane"),
            created_at=two_hours_ago,
        ).model_dump_json()
        for i in range(3)
    ]
    run(cli, "ingest", str(jsonl(tmp_path / "in.jsonl", lines)))
    assert "| Messages | 3 | 0 |" in run(cli, "report", "--period", "1d", "--end", soon()).output
    db = sqlite3.connect(tmp_path / "socialcrm.db")
    with db:
        db.execute("DELETE FROM message WHERE external_id = '1'")
    db.close()
    # The rollups count what was written through socialcrm until they are rebuilt.
    assert "| Messages | 3 | 0 |" in run(cli, "report", "--period", "1d", "--end", soon()).output
    out = run(cli, "db", "rebuild-rollups").output
    assert out.strip() == "rollups rebuilt: 2 messages in 1 rollup rows"
    assert "| Messages | 2 | 0 |" in run(cli, "report", "--period", "1d", "--end", soon()).output


def test_queue_takes_a_limit_and_lists_the_shown_priority_first(
    cli: CliRunner, tmp_path: Path
) -> None:
    run(cli, "init")
    f = jsonl(
        tmp_path / "q.jsonl",
        [
            mention("1", "@acme where is my refund?", "u1", "ann"),
            mention("2", "@acme where is my refund? terrible awful service", "u2", "bob"),
            # Ann again on her ticket: it becomes urgent, her draft keeps its lower score.
            mention("3", "@acme I will report you to trading standards", "u1", "ann"),
        ],
    )
    run(cli, "ingest", str(f))
    out = run(cli, "queue", "200").output
    labels = [line.split()[1] for line in out.splitlines() if line.startswith("  #")]
    assert labels == sorted(labels, key=["URGENT", "HIGH", "NORMAL", "LOW"].index), out
    assert labels[0] == "URGENT" and "HIGH" in labels
    listed = run(cli, "tickets", "list").output.splitlines()
    assert [line.split()[2] for line in listed] == ["urgent", "high"]
    assert "limit must be a number" in run(cli, "queue", "many", code=2).output


def test_email_address_shown_without_an_at_and_rule_trace_on_its_own_lines(
    cli: CliRunner, tmp_path: Path
) -> None:
    run(cli, "init")
    email = InboundMessage(
        channel="email",
        external_id="m1",
        text="My package is broken, awful, I want a refund",
        author=Author(email="cora@example.com", name="Cora"),
    ).model_dump_json()
    run(cli, "ingest", str(jsonl(tmp_path / "e.jsonl", [email])))
    queue = run(cli, "queue").output
    assert " cora@example.com " in queue and "@cora@" not in queue
    shown = run(cli, "show", "1").output
    assert "From: Cora cora@example.com" in shown
    lines = shown.splitlines()
    prio = next(i for i, line in enumerate(lines) if line.startswith("Priority high (score"))
    assert ";" not in lines[prio] and lines[prio + 1] == "Rules:"
    assert lines[prio + 2].startswith("  ") and ": " in lines[prio + 2]
    ticket = run(cli, "tickets", "show", "1").output
    assert "Rules:" in ticket and "refund: intent refund" in ticket


def test_quarantine_list_is_plain_words(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    assert "The quarantine is empty" in run(cli, "quarantine", "list").output
    f = jsonl(tmp_path / "bad.jsonl", ["{not json", json.dumps({"channel": "x"})])
    run(cli, "ingest", str(f), code=3)
    out = run(cli, "quarantine", "list").output
    assert "None" not in out and "(record)" not in out
    assert "2 quarantined payloads waiting" in out and "line 1: Invalid JSON" in out


def test_missing_postgresql_database_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    from tests.conftest import PG_ADMIN_URL

    url = sa_url(PG_ADMIN_URL, "socialcrm_no_such_database")
    (tmp_path / "config.yaml").write_text(f"database: {url}\n")
    res = run(cli, "queue", code=2)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "cannot open the database" in lines[0], res.output
    if "connect" in lines[0].lower() and "refused" in lines[0].lower():
        pytest.skip("PostgreSQL is not running")
    assert 'database "socialcrm_no_such_database" does not exist' in lines[0]


def sa_url(admin: str, database: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(admin).set(database=database).render_as_string(False)


@pytest.mark.parametrize("command", ["run", "sandbox"])
def test_port_out_of_range_or_in_use_is_one_line(cli: CliRunner, command: str) -> None:
    import socket

    run(cli, "init")
    res = run(cli, command, "--port", "99999", code=2)
    assert res.output.strip() == "socialcrm: --port: 99999 is not a TCP port (0 to 65535)"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run(cli, command, "--port", str(port), code=2)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], res.output


def test_unopenable_sqlite_file_starts_no_driver_thread(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver thread that fails after the command ended printed a traceback of its own."""
    import threading

    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    (tmp_path / "config.yaml").write_text("database: sqlite:///no/such/dir/x.db\n")
    res = run(cli, "ingest", str(jsonl(tmp_path / "in.jsonl", [mention("1", "hi")])), code=2)
    assert res.output.strip().endswith("unable to open database file")
    assert started == []


@pytest.mark.parametrize(
    "command",
    [
        ("triage", "status"),
        ("tickets", "list"),
        ("queue",),
        ("report",),
        ("quarantine", "list"),
        ("alerts", "list"),
        ("audit",),
        ("cluster",),
        ("approve", "1"),
    ],
)
def test_a_command_that_reads_makes_no_database(
    cli: CliRunner, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Run in the wrong folder, or with a config naming a file not made yet, a command that
    reads the store says so rather than leaving an empty database behind."""
    db = tmp_path / "socialcrm.db"
    out = run(cli, *command, code=2).output.strip()
    assert out == (
        f"socialcrm: no database at {db}, and no config.yaml here: `socialcrm init` makes "
        "both, or `--config FILE` names yours"
    )
    (tmp_path / "config.yaml").write_text("database: sqlite:///elsewhere.db\n")
    out = run(cli, *command, code=2).output.strip()
    assert out == (
        f"socialcrm: no database at {tmp_path / 'elsewhere.db'}: `socialcrm db upgrade` creates it"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_commands_that_store_what_they_are_given_make_the_database(
    cli: CliRunner, tmp_path: Path
) -> None:
    db = tmp_path / "socialcrm.db"
    labelled = json.loads(mention("1", "@acme my parcel is lost"))
    labelled["sentiment_label"] = "negative"
    given = [
        ("ingest", str(jsonl(tmp_path / "in.jsonl", [mention("1", "@acme hi")]))),
        ("triage", "learn", "--no-train", str(jsonl(tmp_path / "l.jsonl", [json.dumps(labelled)]))),
        ("customers", "import", str(tmp_path / "c.csv")),
    ]
    (tmp_path / "c.csv").write_text("name,email\nJane Doe,jane@example.com\n", encoding="utf-8")
    for command in given:
        db.unlink(missing_ok=True)
        run(cli, *command)
        assert db.exists(), command


def test_alerts_list_and_audit_from_the_command_line(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    f = jsonl(
        tmp_path / "a.jsonl",
        [
            mention("1", "@acme I will report you to trading standards", "u1", "ann"),
            mention("2", "@acme my order is two weeks late, terrible", "u2", "bob"),
        ],
    )
    run(cli, "ingest", str(f))
    run(cli, "reject", "2", "not", "needed")
    alerts = run(cli, "alerts", "list").output
    assert alerts.startswith(
        "Drafts waiting 1; replies sent 0, failed 0; alerts waiting 1, failed 0."
    )
    assert "pending  critical  escalation: Legal or safety risk" in alerts
    audit = run(cli, "audit").output.splitlines()
    assert (
        "tester via cli: reply.reject reply #2" in audit[0] and '"reason": "not needed"' in audit[0]
    )
    assert "The audit log has nothing" in run(cli, "audit", "--actor", "nobody").output


def test_log_format_json(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    (tmp_path / "config.yaml").write_text("database: sqlite:///fresh.db\n")
    f = jsonl(tmp_path / "in.jsonl", [mention("1", "@acme hi")])
    res = run(cli, "--log-format", "json", "-v", "ingest", str(f))
    logged = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert any("upgrading database schema" in r["message"] for r in logged), res.output
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in logged)


def test_database_commands_need_no_platform_secrets(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(cli, "init")
    for name in ("X_TOKEN", "SLACK_SECRET", "SLACK_TOKEN", "DB_NAME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.yaml").write_text(
        "database: sqlite:///socialcrm.db\n"
        "sources:\n"
        "  - {name: x-acme, type: x, bearer_token: '${X_TOKEN}', user_id: '1'}\n"
        "slack: {signing_secret: '${SLACK_SECRET}', bot_token: '${SLACK_TOKEN}', channel: C1}\n"
    )
    assert "queue is empty" in run(cli, "queue").output
    assert "x-acme" in run(cli, "sources").output
    run(cli, "tickets", "list")
    refused = run(cli, "config", "check", code=2).output
    assert "config.yaml:3: sources[0].bearer_token: environment variable X_TOKEN is not set" in (
        refused
    )
    assert "SLACK_SECRET is not set" in run(cli, "run", code=2).output
    # The database itself must still resolve.
    (tmp_path / "config.yaml").write_text("database: 'sqlite:///${DB_NAME}.db'\n")
    assert "DB_NAME is not set" in run(cli, "queue", code=2).output


def test_config_check_runs_what_run_runs(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "init")
    base = (tmp_path / "config.yaml").read_text()
    sources = (
        "sources:\n"
        "  - name: x-acme\n"
        "    type: x\n"
        "    bearer_tokn: abcdefghijklmnop\n"
        "    bearer_token: abcdefghijklmnop\n"
        "    user_id: '1'\n"
        "  - name: pigeon\n"
        "    type: carrier-pigeon\n"
    )
    (tmp_path / "config.yaml").write_text(base.replace("sources: []\n", sources))
    first = base[: base.index("sources: []")].count("\n") + 1
    for command in (["config", "check"], ["run", "--port", "0"]):
        out = run(cli, *command, code=2).output
        assert f"config.yaml:{first + 3}: sources[0].bearer_tokn: Extra inputs" in out, out
        assert f"config.yaml:{first + 7}: sources[1].type: unknown connector 'carrier-pigeon'" in (
            out
        )
        assert "Traceback" not in out


def test_every_reply_template_compiles_before_a_command_checks_or_drafts(
    cli: CliRunner, tmp_path: Path
) -> None:
    run(cli, "init")
    (tmp_path / "tpl" / "replies").mkdir(parents=True)
    broken = tmp_path / "tpl" / "replies" / "thanks.j2"
    broken.write_text("Thanks {{ name }},\n{% if %}\n")
    base = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(
        base.replace("responder:\n", "responder:\n  templates_dir: tpl\n")
    )
    f = jsonl(tmp_path / "in.jsonl", [mention("1", "@acme love the new app, thank you!")])
    # The commands that draft refuse as the daemon does, before anything is stored.
    for command in (["config", "check"], ["rules", "check"], ["ingest", str(f)]):
        out = run(cli, *command, code=2).output
        assert f"{broken}:2: Expected an expression" in out, out
    broken.write_text("Thanks {{ name }}, {{ signature }}\n")
    # Stored now, and not before: no repeat of a message stored by the refused run.
    summary = json.loads(run(cli, "ingest", str(f), "--json").output)
    assert (summary["stored"], summary["duplicates"], summary["drafts"]) == (1, 0, 1), summary


def test_report_ends_at_the_last_whole_day_and_marks_partial_buckets(
    cli: CliRunner, tmp_path: Path
) -> None:
    run(cli, "init")
    (tmp_path / "config.yaml").write_text(
        (tmp_path / "config.yaml").read_text().replace("timezone: UTC", "timezone: Asia/Tokyo")
    )
    data = json.loads(run(cli, "report", "--period", "7d", "--format", "json").output)
    end = datetime.fromisoformat(data["period"]["end"])
    from zoneinfo import ZoneInfo

    local = end.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (0, 0) and datetime.now(UTC) - end < timedelta(days=1)
    assert len(data["period"]["buckets"]) == 7 and data["period"]["partial"] == []
    hourly = json.loads(run(cli, "report", "--period", "24h", "--format", "json").output)
    assert datetime.fromisoformat(hourly["period"]["end"]).minute == 0
    cut = json.loads(
        run(
            cli,
            "report",
            "--period",
            "2d",
            "--end",
            "2026-12-01T15:30:00+09:00",
            "--format",
            "json",
        ).output
    )
    assert cut["period"]["partial"] == ["2026-11-29 15:00", "2026-12-01 15:00"]
