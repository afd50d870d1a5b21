"""Logging: secrets never reach the log, whichever library writes the line; JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp.test_utils import TestServer

from socialcrm import logs
from socialcrm.config import Config
from socialcrm.sandbox.server import Sandbox, make_app
from socialcrm.sources import make_source


def ours() -> logging.StreamHandler:  # type: ignore[type-arg]
    """The handler ``logs.configure`` installed."""
    (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == "socialcrm"]
    assert isinstance(handler, logging.StreamHandler)
    return handler


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's output at DEBUG, as ``socialcrm -vv`` sets it up."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure(logging.DEBUG)
    stream = io.StringIO()
    handler = ours()
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logs.redact.clear()


async def test_tweepy_debug_line_does_not_show_the_bearer_token(captured: io.StringIO) -> None:
    box = Sandbox(7, messages=20)
    token = box.credentials.x_bearer_token
    async with TestServer(make_app(box), host="127.0.0.1") as server:
        cfg = Config.model_validate(
            {
                "sources": [
                    {
                        "name": "x-acme",
                        "type": "x",
                        "bearer_token": token,
                        "user_id": "1",
                        "base_url": str(server.make_url("/x")),
                    }
                ]
            }
        )
        src = make_source(cfg.sources[0], 0)
        try:
            box.release(5, "x")
            await src.connector.fetch(None)
        finally:
            await src.http.close()
    out = captured.getvalue()
    assert "Making API request" in out  # tweepy's own debug line, headers included
    assert "'Authorization': '[redacted]'" in out
    assert token not in out


@pytest.mark.parametrize(
    ("line", "hidden"),
    [
        ("GET /x?access_token=abc123def&limit=5", "abc123def"),
        ('{"client_secret": "s3cr3t-value", "id": 4}', "s3cr3t-value"),
        ("Authorization: Bearer eyJhbGciOi.payload", "eyJhbGciOi.payload"),
        ("headers={'X-Slack-Signature': 'v0=deadbeef'}", "v0=deadbeef"),
        ("password=hunter2hunter2 user=bob", "hunter2hunter2"),
    ],
)
def test_credential_shaped_values_are_redacted(
    captured: io.StringIO, line: str, hidden: str
) -> None:
    logging.getLogger("somelibrary").warning("sent %s", line)
    out = captured.getvalue()
    assert hidden not in out and "[redacted]" in out


def test_configured_secret_is_redacted_anywhere_in_a_record(captured: io.StringIO) -> None:
    cfg = Config.model_validate({"mattermost": {"token": "mm-token-0123456789"}})
    logs.add_secrets(cfg)
    logging.getLogger("aiohttp.access").info("POST /hooks text=mm-token-0123456789 ok")
    try:
        raise ValueError("bad token mm-token-0123456789")
    except ValueError:
        logging.getLogger("socialcrm.x").exception("failed")
    out = captured.getvalue()
    assert "mm-token-0123456789" not in out and "ValueError: bad token [redacted]" in out


def test_json_lines_have_time_level_logger_and_message(captured: io.StringIO) -> None:
    stream = io.StringIO()
    logs.configure(logging.INFO, "json")
    ours().setStream(stream)
    logging.getLogger("socialcrm.daemon").info("listening on %s", "http://127.0.0.1:8080")
    record = json.loads(stream.getvalue())
    assert record["level"] == "INFO" and record["logger"] == "socialcrm.daemon"
    assert record["message"] == "listening on http://127.0.0.1:8080"
    assert record["time"].endswith("Z") and "T" in record["time"]
