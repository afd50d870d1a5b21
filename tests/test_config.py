"""Configuration: validation, secrets from the environment, errors naming file:line and path."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from socialcrm.config import STARTER_CONFIG, ConfigError, load_config
from socialcrm.timespec import parse_duration


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_starter_config_is_valid(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, STARTER_CONFIG))
    assert cfg.brand.lexicon["delayed"] == -1.8
    assert cfg.database_url() == f"sqlite+aiosqlite:///{tmp_path / 'socialcrm.db'}"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.tickets.thread_window == timedelta(hours=72)
    assert cfg.rule_paths()[0].name == "default.yaml"


def test_bad_duration_names_path_and_line(tmp_path: Path) -> None:
    text = (
        "sources:\n  - {name: a, type: x}\n  - {name: b, type: x}\n"
        "  - name: c\n    type: rss\n    interval: soon\n"
    )
    msg = problems(tmp_path, text)
    assert (
        msg == f"{tmp_path / 'config.yaml'}:6: sources[2].interval: "
        'expected a duration like "60s", got "soon"'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "brand:\n  timezone: Mars/Olympus\n",
            ':2: brand.timezone: expected a time zone like "Europe/Berlin"',
        ),
        (
            "brand:\n  lexicon:\n    delayed: -9\n",
            ":2: brand.lexicon: valence of 'delayed' must be between -4 and 4",
        ),
        ("database: mysql://x\n", ":1: database: expected a database URL"),
        ("tickets:\n  thread_windw: 3h\n", ":2: tickets.thread_windw: unknown setting"),
        ("bogus: 1\n", ":1: bogus: unknown setting"),
        ("sources:\n  - type: x\n", ":2: sources[0].name: is required"),
        (
            "sources:\n  - {name: A B, type: x}\n",
            ":2: sources[0].name: String should match pattern",
        ),
        (
            "sources:\n  - {name: a, type: x}\n  - {name: a, type: rss}\n",
            "two sources are named 'a'",
        ),
        (
            "staff:\n  - {name: dana, role: boss}\n",
            ":2: staff[0].role: Input should be 'viewer', 'agent', 'approver' or 'admin'",
        ),
        ("- just\n- a list\n", ":1: expected a mapping of settings at the top level"),
        ("brand: {name: [unclosed\n", "invalid YAML"),
        ("brand:\n  name: a\n  name: b\n", ":3: brand.name: duplicate key 'name'"),
    ],
)
def test_bad_values_are_reported_clearly(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    msg = problems(tmp_path, "tickets:\n  thread_window: soon\n  reopen_window: later\n")
    assert "tickets.thread_window" in msg and "tickets.reopen_window" in msg
    assert len(msg.splitlines()) == 2


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_TOKEN", "s3cret")
    text = (
        "sources:\n  - name: x\n    type: x\n"
        "    bearer_token: ${X_TOKEN}\n    region: ${REGION:-eu}\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.sources[0].settings() == {"bearer_token": "s3cret", "region": "eu"}


def test_missing_secret_names_variable_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    msg = problems(tmp_path, "sources:\n  - name: x\n    type: x\n    token: ${NOPE_TOKEN}\n")
    assert msg.endswith(":4: sources[0].token: environment variable NOPE_TOKEN is not set")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"brand: {name: caf\xe9}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        (45, 45),
        ("250ms", 0.25),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["soon", "-5s", -1, "5 parsecs", "", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "more.yaml").write_text("rules: []\n")
    cfg = load_config(write(tmp_path, "rules: [more.yaml]\ndefault_rules: false\n"))
    assert cfg.rule_paths() == [tmp_path / "more.yaml"]


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    config = load_config(example)
    assert config.sla.targets["urgent"].first_response.total_seconds() == 3600
    assert config.alerts.sinks == [] and config.reports.digests == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "mattermost:\n  token: ''\n",
            ":2: mattermost.token: must not be empty or blank",
        ),
        (
            "mattermost:\n  token: short-token\n",
            ":2: mattermost.token: must be at least 16 characters, got 11",
        ),
        (
            "slack:\n  signing_secret: ''\n  bot_token: xoxb-1-2-3\n  channel: C1\n",
            ":2: slack.signing_secret: must not be empty or blank",
        ),
        (
            "slack:\n  signing_secret: 0123456789abcdef0123\n  bot_token: '  '\n  channel: C1\n",
            ":3: slack.bot_token: must not be empty or blank",
        ),
        (
            "alerts:\n  sinks:\n    - {type: webhook, name: w, url: 'http://h/x', secret: abc}\n",
            ":3: alerts.sinks[0].webhook.secret: must be at least 16 characters, got 3",
        ),
        (
            "alerts:\n  sinks:\n    - {type: slack, name: s, token: '', channel: C1}\n",
            ":3: alerts.sinks[0].slack.token: must not be empty or blank",
        ),
    ],
)
def test_secrets_must_not_be_empty_or_short(tmp_path: Path, text: str, expected: str) -> None:
    # An empty Mattermost token let a request without a token in; an empty Slack signing
    # secret killed the daemon with a traceback. Both are configuration errors now, and the
    # error never repeats the value.
    msg = problems(tmp_path, text)
    assert expected in msg
    assert "short-token" not in msg and "abc" not in msg


def test_config_check_refuses_an_empty_secret(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from socialcrm.cli import main

    path = write(tmp_path, "mattermost:\n  token: ''\n")
    result = CliRunner().invoke(main, ["-c", str(path), "config", "check"])
    assert result.exit_code != 0
    assert "mattermost.token: must not be empty or blank" in result.output


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"type": "x", "bearer_token": ""}, ("bearer_token", "must not be empty")),
        (
            {"type": "webhook", "secret": "0123456789"},
            ("secret", "must be at least 16 characters, got 10"),
        ),
        (
            {"type": "mastodon", "base_url": "https://m.example", "access_token": " "},
            ("access_token", "must not be empty"),
        ),
    ],
)
def test_connector_secrets_must_not_be_empty_or_short(
    settings: dict[str, str], expected: tuple[str, str]
) -> None:
    from socialcrm.config import SourceConfig
    from socialcrm.sources import SourceSetupError, make_source

    with pytest.raises(SourceSetupError) as info:
        make_source(SourceConfig.model_validate({"name": "s", **settings}), 0)
    field, problem = expected
    assert f"sources[0].{field}:" in str(info.value) and problem in str(info.value)


def test_reading_the_config_loads_no_database_layer(tmp_path: Path) -> None:
    """Commands that only read the database start quickly: the config (every section, alerts,
    SLA, spikes and digests with it) is read without SQLAlchemy, SQLModel or jinja2."""
    path = tmp_path / "config.yaml"
    path.write_text(STARTER_CONFIG, encoding="utf-8")
    heavy = ["sqlalchemy", "sqlmodel", "jinja2", "socialcrm.models", "socialcrm.db"]
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from socialcrm.config import load_config\n"
        f"config = load_config(Path({str(path)!r}))\n"
        "assert config.sla.targets and config.alerts.cooldown and config.spikes.window\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
