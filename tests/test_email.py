"""The email connector against real servers: Dovecot (IMAP) and aiosmtpd (SMTP).

Plus the MIME corpus in tests/data/emails: awkward real-world mail, each checked for the text
the customer wrote this time.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import imaplib
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from connectors.imap import ImapConnector, reply_subject
from connectors.mime import MalformedEmail, decode_bytes, html_to_text, parse_email, trim_reply
from socialcrm.connector import (
    AuthError,
    Batch,
    Connector,
    FatalError,
    InboundMessage,
    OutboundReply,
    ReplyingConnector,
    RetryableError,
    load_connector,
)
from socialcrm.pipeline import Pipeline
from tests.conftest import need
from tests.connector_suite import BadItemSuite, ConnectorHarness, ConnectorSuite, FailureSuite
from tests.email_server import Dovecot, ImapProxy, SmtpSink, dovecot_missing, free_port
from tests.slack_stand_in import slack_stand_in

CORPUS = Path(__file__).parent / "data" / "emails"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the session; each test reads its own mailbox."""
    missing = dovecot_missing()
    if missing:
        need("Dovecot", missing)
    server = Dovecot.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def mailbox(dovecot: Dovecot) -> str:
    """A fresh, empty mailbox for this test."""
    name = f"T{uuid.uuid4().hex[:10]}"
    await dovecot.create(name)
    return name


Make = Callable[..., ImapConnector]


@pytest.fixture
async def connect(dovecot: Dovecot, mailbox: str) -> AsyncIterator[Make]:
    """Build connectors on the test's mailbox; all of them are closed at the end."""
    made: list[ImapConnector] = []

    def make(**overrides: Any) -> ImapConnector:
        settings = dovecot.settings(**{"mailbox": mailbox, **overrides})
        c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """An aiosmtpd listener that records what it is sent."""
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def mail(n: int, *, sender: str = "carol@example.org", subject: str | None = None) -> bytes:
    """A plain test message with Message-ID <n.test@example.org>."""
    when = format_datetime(datetime(2024, 5, 1, 9, n % 60, tzinfo=UTC))
    return (
        f"From: Carol Customer <{sender}>\r\n"
        "To: support@acme.example\r\n"
        f"Subject: {subject or f'Question {n}'}\r\n"
        f"Date: {when}\r\n"
        f"Message-ID: <{n}.test@example.org>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Message number {n}: where is my order?\r\n"
    ).encode()


def ids(batch: Batch) -> list[str]:
    return [m.external_id for m in batch.messages]


# -- fetching from Dovecot ----------------------------------------------------------------------


async def test_fetch_all_then_only_new_after_resume(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    await dovecot.append(mail(1), mail(2), mail(3), mailbox=mailbox)
    first = await connect().fetch(None)
    assert ids(first) == ["<1.test@example.org>", "<2.test@example.org>", "<3.test@example.org>"]
    assert first.more is False
    assert first.cursor is not None and set(first.cursor) == {"uidvalidity", "last_uid"}
    assert first.cursor["last_uid"] == 3
    m = first.messages[0]
    assert m.channel == "email" and m.direct is True
    assert m.author.email == "carol@example.org" and m.author.name == "Carol Customer"
    assert m.text == "Message number 1: where is my order?"
    assert m.raw["imap"] == {
        "mailbox": mailbox,
        "uid": 1,
        "uidvalidity": first.cursor["uidvalidity"],
    }

    await dovecot.append(mail(4), mail(5), mailbox=mailbox)
    resumed = connect()  # a new instance, as after a restart: only the saved cursor is kept
    second = await resumed.fetch(first.cursor)
    assert ids(second) == ["<4.test@example.org>", "<5.test@example.org>"]
    third = await resumed.fetch(second.cursor)
    assert third.messages == [] and third.cursor == second.cursor
    assert not set(ids(first)) & set(ids(second))


async def test_chunks_of_batch_size_with_more(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    await dovecot.append(*(mail(n) for n in range(1, 6)), mailbox=mailbox)
    c = connect(batch_size=2)
    seen: list[str] = []
    cursor = None
    mores = []
    for _ in range(5):
        batch = await c.fetch(cursor)
        seen += ids(batch)
        mores.append(batch.more)
        cursor = batch.cursor
        if not batch.more:
            break
    assert mores == [True, True, False]
    assert seen == [f"<{n}.test@example.org>" for n in range(1, 6)]


async def test_reading_leaves_the_mailbox_unchanged(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    await dovecot.append(mail(1), mail(2), mailbox=mailbox)
    await connect().fetch(None)
    flags = await dovecot.flags(mailbox)
    assert len(flags) == 2
    assert all(b"\\Seen" not in line for line in flags)
    assert all(b"\\Recent" in line for line in flags)  # EXAMINE: not even \Recent was taken


async def test_empty_mailbox(connect: Make) -> None:
    batch = await connect().fetch(None)
    assert batch.messages == [] and batch.more is False
    assert batch.cursor is not None and batch.cursor["last_uid"] == 0


async def test_default_mailbox_is_inbox(dovecot: Dovecot) -> None:
    await dovecot.append(mail(900))
    settings = dovecot.settings()
    settings.pop("mailbox", None)
    c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
    try:
        batch = await c.fetch(None)
    finally:
        await c.close()
    assert c.config.mailbox == "INBOX"
    assert "<900.test@example.org>" in ids(batch)


async def test_uidvalidity_change_resyncs_from_uid_1(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    await dovecot.append(mail(1), mail(2), mailbox=mailbox)
    c = connect()
    before = await c.fetch(None)
    assert before.cursor is not None
    await dovecot.recreate(mailbox)  # e.g. restored from a backup: UIDs start over
    await dovecot.append(mail(1), mail(2), mail(3), mailbox=mailbox)
    after = await c.fetch(before.cursor)
    assert after.cursor is not None
    assert after.cursor["uidvalidity"] != before.cursor["uidvalidity"]
    # Everything again, from UID 1: the old last_uid (2) would have hidden two messages.
    assert ids(after) == [f"<{n}.test@example.org>" for n in (1, 2, 3)]
    assert after.cursor["last_uid"] == 3


async def test_uidvalidity_resync_duplicates_nothing_in_the_pipeline(
    dovecot: Dovecot, mailbox: str, connect: Make, pipeline: Pipeline
) -> None:
    await dovecot.append(mail(1), mail(2), mail(3), mailbox=mailbox)
    c = connect()
    first = await c.fetch(None)
    r1 = await pipeline.ingest(first, "support-mail")
    assert r1.stored == 3
    await dovecot.recreate(mailbox)
    await dovecot.append(mail(1), mail(2), mail(3), mail(4), mailbox=mailbox)
    second = await c.fetch(first.cursor)
    assert len(second.messages) == 4
    r2 = await pipeline.ingest(second, "support-mail")
    assert (r2.stored, r2.duplicates) == (1, 3)
    third = await c.fetch(second.cursor)
    assert third.messages == []


async def test_mails_reusing_a_message_id_are_different_messages(
    dovecot: Dovecot, mailbox: str, connect: Make, pipeline: Pipeline, store: Any
) -> None:
    # Some mailers and forwarding services reuse a Message-ID: the second mail was dropped as
    # a duplicate of the first. Same id with other content is another message; the same mail
    # read again is still a duplicate.
    from socialcrm.models import Message

    first = mail(7)
    other = mail(7).replace(b"Message number 7: where is my order?", b"And now my refund failed.")
    await dovecot.append(first, other, mailbox=mailbox)
    batch = await connect().fetch(None)
    assert ids(batch) == ["<7.test@example.org>", "<7.test@example.org>"]
    r = await pipeline.ingest(batch, "support-mail")
    assert (r.stored, r.duplicates) == (2, 0)
    await dovecot.append(mail(7).replace(b"Date: ", b"X-Forwarded: yes\r\nDate: "), mailbox=mailbox)
    r = await pipeline.ingest(await connect().fetch(batch.cursor), "support-mail")
    assert (r.stored, r.duplicates) == (0, 1)
    async with store.reader() as s:
        texts = sorted((await s.execute(sa.select(Message.text))).scalars())
    assert texts == ["And now my refund failed.", "Message number 7: where is my order?"]


async def test_uidvalidity_resync_does_not_quarantine_twice(
    dovecot: Dovecot, mailbox: str, connect: Make, pipeline: Pipeline, store: Any
) -> None:
    from socialcrm.models import Quarantine

    junk = b"junk that is no email \x80\x81\r\n\r\nmore bytes\r\n"
    await dovecot.append(mail(1), junk, mailbox=mailbox)
    c = connect()
    first = await c.fetch(None)
    r1 = await pipeline.ingest(first, "support-mail")
    assert (r1.stored, r1.quarantined) == (1, 1)
    await dovecot.recreate(mailbox)
    await dovecot.append(mail(1), junk, mail(2), mailbox=mailbox)
    second = await c.fetch(first.cursor)
    assert len(second.quarantined) == 1
    r2 = await pipeline.ingest(second, "support-mail")
    assert (r2.stored, r2.duplicates) == (1, 1)
    async with store.reader() as s:
        assert len((await s.execute(sa.select(Quarantine))).scalars().all()) == 1


async def test_wrong_password_is_an_auth_error(connect: Make) -> None:
    with pytest.raises(AuthError, match="AUTHENTICATIONFAILED"):
        await connect(password="not-the-password").fetch(None)


async def test_unknown_mailbox_is_fatal(connect: Make) -> None:
    with pytest.raises(FatalError, match="NoSuchBox"):
        await connect(mailbox="NoSuchBox").fetch(None)


async def test_server_down_is_retryable() -> None:
    settings = {
        "host": "127.0.0.1",
        "port": free_port(),
        "username": "u",
        "password": "p",
        "tls": "none",
        "from_address": "support@acme.example",
    }
    c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
    with pytest.raises(RetryableError):
        await c.fetch(None)
    await c.close()


async def test_server_that_says_bye_is_retryable() -> None:
    async def bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* BYE Too many connections, try later\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(bye, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "username": "u",
        "password": "p",
        "tls": "none",
        "from_address": "support@acme.example",
    }
    c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
    try:
        with pytest.raises(RetryableError, match="closed the connection"):
            await c.fetch(None)
    finally:
        await c.close()
        server.close()
        await server.wait_closed()


async def test_server_gone_between_polls_then_back() -> None:
    """The kept connection dies with the server; the next poll says so and reconnects later."""
    if dovecot_missing():
        need("Dovecot", str(dovecot_missing()))
    server = Dovecot.start()
    c = ImapConnector(ImapConnector.Config.model_validate(server.settings()), None)
    try:
        await server.append(mail(1))
        first = await c.fetch(None)
        assert ids(first) == ["<1.test@example.org>"]
        server.stop()
        with pytest.raises(RetryableError):
            await c.fetch(first.cursor)
    finally:
        await c.close()
        server.stop()


async def test_unparseable_mail_is_quarantined_not_lost(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    junk = b"\xff\xfe\x00junk that is no email \x80\x81\r\n\r\nmore bytes \xc3\x28\r\n".replace(
        b"\x00", b""
    )
    await dovecot.append(mail(1), junk, mail(2), mailbox=mailbox)
    batch = await connect().fetch(None)
    assert ids(batch) == ["<1.test@example.org>", "<2.test@example.org>"]
    assert len(batch.quarantined) == 1
    q = batch.quarantined[0]
    assert "UID 2" in q.error and "not an email" in q.error
    assert q.raw.startswith("base64:")
    assert base64.b64decode(q.raw.removeprefix("base64:")) == junk
    assert batch.cursor is not None and batch.cursor["last_uid"] == 3


async def test_ignore_from_skips_our_own_mail(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    await dovecot.append(
        mail(1, sender="support@acme.example"),  # our own address (a copy of a reply)
        mail(2, sender="noreply@notify.shop.example"),
        mail(3, sender="bob@example.net"),
        mailbox=mailbox,
    )
    batch = await connect(ignore_from=["*@notify.shop.example"]).fetch(None)
    assert ids(batch) == ["<3.test@example.org>"]
    assert batch.cursor is not None and batch.cursor["last_uid"] == 3


async def test_a_huge_message_is_fetched_partly(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    raw = (CORPUS / "very-long-body.eml").read_bytes()
    await dovecot.append(raw, mailbox=mailbox)
    batch = await connect(max_message_bytes=10_000).fetch(None)
    (m,) = batch.messages
    assert m.raw["partial"]["fetched"] == 10_000
    assert m.raw["partial"]["size"] > 10_000
    assert m.text.startswith("The photo sync has failed all morning.")
    assert m.subject == "Sync keeps failing - full log"


async def test_the_corpus_survives_the_trip_through_dovecot(
    dovecot: Dovecot, mailbox: str, connect: Make
) -> None:
    files = sorted(CORPUS.glob("*.eml"))
    await dovecot.append(*(f.read_bytes() for f in files), mailbox=mailbox)
    batch = await connect(batch_size=100).fetch(None)
    assert len(batch.messages) + len(batch.quarantined) == len(files)
    assert len(batch.quarantined) == 1
    direct = {}
    for f in files:
        try:
            m = parse_email(f.read_bytes())
        except MalformedEmail:
            continue
        direct[m.external_id] = m
    assert {m.external_id for m in batch.messages} == set(direct)
    for m in batch.messages:
        assert m.text == direct[m.external_id].text
        assert m.subject == direct[m.external_id].subject


# -- the shared conformance suite ------------------------------------------------------------


class ImapHarness:
    """Drives the suite against Dovecot: one mailbox per test, mail delivered by APPEND.

    The connector talks to Dovecot through ImapProxy, which serves the faults an IMAP
    server can have (a busy mailbox, no answer, a connection cut mid-FETCH); ``bad_item``
    swaps a message for an unreadable one. Rate limits, HTML and bad envelopes are HTTP
    notions and are skipped. Replies: None, so the suite's send test is skipped: it addresses
    the reply by ``to_handle`` and email has none; send() is tested against aiosmtpd above.
    """

    page_size = 3
    faults = frozenset({"bad_item", *ImapProxy.FAULTS})

    def __init__(self, server: Dovecot, mailbox: str, proxy: ImapProxy) -> None:
        self.server = server
        self.mailbox = mailbox
        self.proxy = proxy
        self.made: list[ImapConnector] = []
        self.sent = 0

    def connector(self, *, valid_credentials: bool = True) -> Connector:
        # A healthy command on a loaded CI machine never comes near 5 s; the proxy's timeout
        # fault says nothing until the client gives up, however long it waits.
        settings = self.server.settings(
            mailbox=self.mailbox, batch_size=self.page_size, port=self.proxy.port, timeout_s=5.0
        )
        if not valid_credentials:
            settings["password"] = "wrong-" + self.server.password
        c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
        self.made.append(c)
        # A nested Config class does not satisfy the protocol's ClassVar for mypy; it does at
        # run time (the contract test below checks isinstance).
        return cast(Connector, c)

    async def publish(self, count: int) -> list[str]:
        numbers = list(range(self.sent + 1, self.sent + count + 1))
        self.sent += count
        await self.server.append(*(mail(n) for n in numbers), mailbox=self.mailbox)
        return [f"<{n}.test@example.org>" for n in numbers]

    def inject(self, fault: str) -> None:
        if fault in ImapProxy.FAULTS:
            self.proxy.fault = fault
            return
        assert fault == "bad_item"
        # Replace the newest message with one that cannot be read (sync IMAP: a test helper).
        with imaplib.IMAP4("127.0.0.1", self.server.port) as admin:
            admin.login(self.server.user, self.server.password)
            admin.select(self.mailbox)
            _, found = admin.uid("SEARCH", "ALL")
            newest = found[0].split()[-1]
            admin.uid("STORE", newest, "+FLAGS", "(\\Deleted)")
            admin.expunge()
            admin.append(self.mailbox, "", None, b"garbage, no headers at all\r\n")

    def rate_limit_wait_s(self) -> float | None:
        return None

    def replies(self) -> list[tuple[str, str]] | None:
        return None

    async def close(self) -> None:
        for c in self.made:
            await c.close()


class TestImapConformance(ConnectorSuite, FailureSuite, BadItemSuite):
    """IMAP has no rate limits or HTML error pages; replies go over SMTP (tested below)."""

    faults = ImapHarness.faults

    @pytest.fixture
    async def harness(self, dovecot: Dovecot, mailbox: str) -> AsyncIterator[ConnectorHarness]:
        proxy = ImapProxy(dovecot.port)
        await proxy.start()
        h = ImapHarness(dovecot, mailbox, proxy)
        try:
            yield h
        finally:
            await h.close()
            await proxy.stop()


# -- the MIME corpus --------------------------------------------------------------------------

#: file -> what the parsed message must show. "has"/"not" are about the text.
CASES: dict[str, dict[str, Any]] = {
    # No boundary parameter: the parser left the body unsplit and only the subject was kept.
    "multipart-no-boundary.eml": {
        "text": "My parcel 8812 never came and tracking says delivered.",
        "raw": {
            "empty_body": False,
            "attachments": [
                {"filename": "receipt.pdf", "content_type": "application/pdf", "size": 9}
            ],
        },
    },
    # A text part marked inline is the body, even with a file name; an attached one is a file.
    "inline-text-with-filename.eml": {
        "text": "The zip you sent will not open.",
        "raw": {
            "empty_body": False,
            "attachments": [{"filename": "log.txt", "content_type": "text/plain", "size": 8}],
        },
    },
    "gmail-reply-en.eml": {
        "has": ["lid is cracked again", "Order 4471", "Thanks,\nDana"],
        "not": ["wrote:", "We're sorry", "kettle lid cracked after", "Dana Whitfield", "555"],
        "subject": "Re: Your replacement kettle [#1042]",
        "author": ("Dana Whitfield", "dana.whitfield@gmail.com"),
        "in_reply_to": "<170954352210.3391.4402@acme.example>",
        "references": ["<CAFx2Lq1mN0p@mail.gmail.com>", "<170954352210.3391.4402@acme.example>"],
        "raw": {"trimmed": True, "auto": False},
    },
    "outlook-reply-de.eml": {
        "has": ["Können Sie bitte prüfen", "Mit freundlichen Grüßen\nJürgen Weiß"],
        "not": ["Gesendet:", "Ihre Bestellung wurde gestern versandt", "_____"],
        "author": ("Jürgen Weiß", "j.weiss@example.de"),
        "subject": "AW: Lieferung 88213 [#2077]",
    },
    "apple-mail-reply-fr.eml": {
        # format=flowed: the soft-broken sentence is one line again.
        "has": ["reçu le remboursement de ma commande 5521, alors que vous l’aviez promis"],  # noqa: RUF001
        "not": ["a écrit", "Votre remboursement est en cours", "Envoyé de mon iPhone"],
        "author": ("Amélie Durand", "amelie.durand@example.fr"),
    },
    "outlook-original-message-es.eml": {
        "has": ["¡Hola!", "muchísimo", "¿Pueden cambiarlo?", "número"],
        "not": ["Mensaje original", "Estimada clienta"],
        "author": ("María López", "maria.lopez@example.es"),
        "subject": "RE: Su pedido 66120",
    },
    "html-only-newsletter.eml": {
        "has": [
            "Hello Acme team,",
            "- New wholesale prices from 1 April\n- Tom & Jerry's store joined the network",
            "Reply to this email\nor call us",
        ],
        "not": ["<", ">", "{", "trackOpen", "Preview: 3 things", "&amp;", "&nbsp;", "\xa0"],
        "raw": {
            "auto": True,
            "auto_reason": "Precedence: bulk",
            "reply_to": "partners@partner.example",
        },
    },
    "outlook-web-html-reply-nl.eml": {
        "has": ["Goedemiddag,", "twee keer verzendkosten betaald (2 x € 4,95)", "Groet,\nPieter"],
        "not": ["Verzonden:", "Beste Pieter", "<div", "bijlage"],
        "author": ("Pieter de Vries", "p.devries@example.nl"),
    },
    "attachments-inline-image.eml": {
        "has": ["wrong VAT", "GB123456789"],
        "not": ["order,sku,qty", "%PDF", "iVBOR", "JVBER"],
        "raw": {
            "attachments": [
                {"filename": "Rechnung März.pdf", "content_type": "application/pdf", "size": 1540},
                {"filename": "orders.csv", "content_type": "text/csv", "size": 44},
            ],
            "inline_images": 1,
        },
    },
    "quoted-printable.eml": {
        "has": ["Café crème", "error code E=7 every time I switch it on.", "René"],
        "not": ["=C3", "=3D", "=\n"],
    },
    "base64-text.eml": {
        "has": ["Zamówienie nr 88410 dotarło uszkodzone", "Łukasz Nowak"],
        "subject": "Uszkodzone zamówienie 88410",
        "author": ("Łukasz Nowak", "lukasz.nowak@example.pl"),
    },
    "windows-1252-as-latin1.eml": {
        "has": ["€49.99", "“Premium”", "plan – once", "3rd…", "Seán O’Brien"],  # noqa: RUF001
        "not": ["\ufffd", "\x93", "\x80"],
        "raw": {"charsets": ["cp1252"]},
    },
    "missing-charset-8bit.eml": {
        "has": ["Rückerstattung für Bestellung 9921", "naïve", "schön", "Zoë Müller"],
        "not": ["Ã", "\ufffd"],
        "subject": "Rückerstattung für Bestellung 9921",
        "author": ("Zoë Müller", "zoe.mueller@example.at"),
    },
    "unknown-charset.eml": {
        "has": ["Señores, el pedido nº 77 llegó", "español", "Iván"],
        "not": ["\ufffd", "Ã"],
        "subject": "Pedido nº 77 sin manual",
    },
    "rfc2047-utf8.eml": {
        "has": ["hace diez días", "¿Pueden revisarlo?"],
        "subject": "¿Dónde está mi pedido? 🚚 Llevo 10 días esperando",
        "author": ("José García", "jose.garcia@example.cl"),
        "raw": {"reply_to": "jgarcia.trabajo@example.cl"},
    },
    "rfc2047-iso2022jp.eml": {
        "has": ["注文番号 55012 の商品がまだ届いていません。", "山田太郎"],
        "not": ["ご注文ありがとうございます", "Acme Support", "\x1b"],
        "subject": "Re: 注文 55012 の配送について",
        "author": ("山田太郎", "taro.yamada@example.jp"),
    },
    "no-message-id.eml": {
        "has": ["cant log in to my account"],
        "raw": {"synthetic_id": True, "message_id": None},
    },
    "no-date.eml": {
        "has": ["Warranty card for serial KET-200-99812"],
        "created_at": datetime(2024, 3, 15, 11, 22, 33, tzinfo=UTC),  # from Received
    },
    "broken-date.eml": {
        "has": ["kettle in green"],
        "raw": {"date_fallback": "now"},
    },
    "auto-reply.eml": {
        "has": ["out of the office until 25 March"],
        "raw": {"auto": True, "auto_reason": "Auto-Submitted: auto-replied"},
        "in_reply_to": "<171074880066.3391.8080@acme.example>",
    },
    "bounce.eml": {
        "has": ["could not\nbe delivered", "User unknown"],
        "not": ["Reporting-MTA", "Final-Recipient"],
        "author": ("Mail Delivery System", "mailer-daemon@mx.acme.example"),
        "raw": {"auto": True},
    },
    "forwarded-gmail.eml": {
        "has": [
            "I was charged twice",
            "---------- Forwarded message ---------",
            "Thank you for your order! Total charged: 89.00 GBP.",
        ],
        "raw": {"forwarded": True, "trimmed": False},
    },
    "forwarded-as-attachment.eml": {
        "has": ["Is this phishing?", "Verify your account now or it will be deleted"],
        "not": ["<a href", "<p>"],
        "raw": {
            "forwarded": [
                {
                    "from": "security@acme-verify.example",
                    "name": "Acme Security",
                    "subject": "Verify your account",
                    "date": "Thu, 21 Mar 2024 06:02:11 +0000",
                }
            ]
        },
    },
    "very-long-body.eml": {
        "has": ["The photo sync has failed all morning."],
        "truncated": True,
    },
    "empty-body.eml": {
        "text": "Order 7781 never arrived",
        "raw": {"empty_body": True},
    },
    "crlf-line-endings.eml": {
        "text": (
            "Hello,\n\nwe would like a quote for 250 kettles (KET-200) delivered to Dubai.\n"
            "Could you send prices and delivery times?\n\nBest,\nAhmed"
        ),
    },
    "bare-lf.eml": {
        "text": (
            "Please change the invoice address on account 5120 to:\n"
            "Dept. of Physics, Room 2.14\n1 University Road"
        ),
        "author": ("Prof. Ana Silva", "customer@example.edu"),
    },
    "interleaved-reply-en.eml": {
        "text": "It shows 2.4.1.\n\nYes, twice. It still beeps every minute.",
    },
}


def test_every_corpus_file_has_a_case() -> None:
    files = {f.name for f in CORPUS.glob("*.eml")}
    assert len(files) >= 15
    assert files == {*CASES, "broken-not-an-email.eml"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus(name: str) -> None:
    case = CASES[name]
    before = datetime.now(UTC)
    m = parse_email((CORPUS / name).read_bytes())
    after = datetime.now(UTC)
    assert isinstance(m, InboundMessage) and m.channel == "email"
    assert m.external_id
    if "text" in case:
        assert m.text == case["text"]
    for want in case.get("has", []):
        assert want in m.text, f"{want!r} missing from {m.text!r}"
    for unwanted in case.get("not", []):
        assert unwanted not in m.text, f"{unwanted!r} left in {m.text!r}"
    assert "\r" not in m.text
    if "subject" in case:
        assert m.subject == case["subject"]
    if "author" in case:
        assert (m.author.name, m.author.email) == case["author"]
    if "in_reply_to" in case:
        assert m.in_reply_to == case["in_reply_to"]
    if "references" in case:
        assert m.references == case["references"]
    if "created_at" in case:
        assert m.created_at == case["created_at"]
    if case.get("raw", {}).get("date_fallback") == "now":
        assert before <= m.created_at <= after
    assert m.truncated is case.get("truncated", False)
    if m.truncated:
        assert len(m.text) == 40_000
    for key, value in case.get("raw", {}).items():
        assert m.raw[key] == value, key
    if "auto" not in case.get("raw", {}):
        assert m.raw["auto"] is False


def test_the_broken_one_is_refused_with_a_reason() -> None:
    with pytest.raises(MalformedEmail, match="not an email"):
        parse_email((CORPUS / "broken-not-an-email.eml").read_bytes())


def test_synthetic_id_is_stable() -> None:
    raw = (CORPUS / "no-message-id.eml").read_bytes()
    a, b = parse_email(raw), parse_email(raw.replace(b"\n", b"\r\n"))
    assert a.external_id == b.external_id
    assert a.external_id.startswith("synthetic:")
    other = parse_email(raw.replace(b"please help", b"please help me"))
    assert other.external_id != a.external_id


def test_created_at_falls_back_to_the_imap_internal_date() -> None:
    raw = (CORPUS / "broken-date.eml").read_bytes()
    when = datetime(2024, 3, 16, 8, 0, tzinfo=UTC)
    assert parse_email(raw, received_at=when).created_at == when


@pytest.mark.parametrize(
    ("data", "label", "expected"),
    [
        ("café".encode(), "iso-8859-1", "café"),  # UTF-8 mislabelled as latin-1
        ("“x”".encode("cp1252"), "iso-8859-1", "“x”"),  # windows-1252 mislabelled
        ("naïve".encode(), None, "naïve"),  # undeclared 8-bit
        ("naïve".encode("cp1252"), None, "naïve"),
        ("ok €".encode(), "no-such-charset", "ok €"),
        ("日本".encode("iso2022_jp"), "ISO-2022-JP", "日本"),
        ("Grüße".encode("cp1252"), "utf-8", "Grüße"),  # says UTF-8, is not
        ("Привет".encode("koi8-r"), "koi8-r", "Привет"),
    ],
)
def test_charset_guessing(data: bytes, label: str | None, expected: str) -> None:
    assert decode_bytes(data, label)[0] == expected


def test_html_without_a_charset_header_uses_its_meta_charset() -> None:
    html = '<html><head><meta charset="shift_jis"></head><body>ご注文の件</body></html>'
    raw = (
        b"From: a@example.jp\r\nSubject: x\r\nMessage-ID: <m@example.jp>\r\n"
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ) + html.encode("shift_jis")
    assert parse_email(raw).text == "ご注文の件"


def test_html_keeps_line_breaks_and_drops_scripts() -> None:
    html = (
        "<p>One<br>Two</p><script>alert(1)</script><style>p{}</style>"
        "<div>Three &amp; four</div><table><tr><td>a</td><td>b</td></tr></table>"
    )
    assert html_to_text(html) == "One\nTwo\n\nThree & four\n\na b"


@pytest.mark.parametrize(
    "text",
    [
        "The order from\nMay 2nd is late.\n\nOn time deliveries matter.",
        "On Monday my colleague wrote:\nthe kettle leaks. Can you help?",
        "Please send the refund to billing@example.com by 5pm:\nIBAN DE02 1203 0000 0000 2020 51",
    ],
)
def test_trim_reply_keeps_what_only_looks_like_a_quote(text: str) -> None:
    assert trim_reply(text) == (text, False)


# -- sending over SMTP --------------------------------------------------------------------------


def reply(**overrides: Any) -> OutboundReply:
    fields: dict[str, Any] = {
        "reply_id": 1,
        "channel": "email",
        "text": "Hello Dana,\n\nA new lid is on its way. Sorry for the trouble!\n",
        "in_reply_to": "<CAFx2Lq3k8c9e+Wq_7mXb2=TQ@mail.gmail.com>",
        "to_email": "Dana.Whitfield@gmail.com",
        "subject": "Your replacement kettle",
        "references": ["<CAFx2Lq1mN0p@mail.gmail.com>"],
        "ticket_id": 1042,
    }
    fields.update(overrides)
    return OutboundReply(**fields)


def sender(smtp: SmtpSink, **overrides: Any) -> ImapConnector:
    settings = {
        "host": "127.0.0.1",
        "username": "u",
        "password": "p",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_tls": "none",
        "from_address": "support@acme.example",
        "from_name": "Acme Support",
        **overrides,
    }
    return ImapConnector(ImapConnector.Config.model_validate(settings), None)


async def test_send_threads_the_reply(smtp: SmtpSink) -> None:
    receipt = await sender(smtp).send(reply())
    assert len(smtp.received) == 1
    got = smtp.received[0]
    assert got.mail_from == "support@acme.example"
    assert got.rcpt_tos == ["Dana.Whitfield@gmail.com"]
    msg = got.message
    assert msg["Subject"] == "Re: Your replacement kettle [#1042]"
    assert msg["In-Reply-To"] == "<CAFx2Lq3k8c9e+Wq_7mXb2=TQ@mail.gmail.com>"
    assert msg["References"].split() == [
        "<CAFx2Lq1mN0p@mail.gmail.com>",
        "<CAFx2Lq3k8c9e+Wq_7mXb2=TQ@mail.gmail.com>",
    ]
    assert msg["Message-ID"] == receipt.external_id
    assert receipt.external_id.endswith("@acme.example>")
    assert msg["From"] == "Acme Support <support@acme.example>"
    assert msg["To"] == "Dana.Whitfield@gmail.com"
    assert msg.get_content_type() == "text/plain"
    body = msg.get_content().replace("\r\n", "\n")
    assert body == "Hello Dana,\n\nA new lid is on its way. Sorry for the trouble!\n"


async def test_send_as_the_sender_builds_it(smtp: SmtpSink) -> None:
    """The core hands over a subject with Re: and the tag, and references ending in the parent."""
    parent = "<CAFx2Lq3k8c9e+Wq_7mXb2=TQ@mail.gmail.com>"
    await sender(smtp).send(
        reply(
            subject="Re: Your replacement kettle [#1042]",
            references=["<CAFx2Lq1mN0p@mail.gmail.com>", parent],
        )
    )
    msg = smtp.received[0].message
    assert msg["Subject"] == "Re: Your replacement kettle [#1042]"
    assert msg["References"].split() == ["<CAFx2Lq1mN0p@mail.gmail.com>", parent]


async def test_long_message_ids_are_not_mangled(smtp: SmtpSink) -> None:
    long_ids = [f"<{'x' * 90}{n}@mail.gmail.com>" for n in range(3)]
    await sender(smtp).send(reply(in_reply_to=long_ids[-1], references=long_ids[:-1]))
    msg = smtp.received[0].message
    assert msg["In-Reply-To"] == long_ids[-1]
    assert msg["References"].split() == long_ids
    assert b"=?" not in smtp.received[0].data.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    ("subject", "ticket", "expected"),
    [
        ("Order late", 7, "Re: Order late [#7]"),
        ("Re: Order late [#7]", 7, "Re: Order late [#7]"),
        ("AW: Lieferung [#7]", 7, "AW: Lieferung [#7]"),
        ("RE: Order late", None, "RE: Order late"),
        (None, 7, "Re: your message [#7]"),
        ("Order [#6] late", 7, "Re: Order [#6] late [#7]"),
        ("Hi\r\nBcc: evil@example.com", 5, "Re: Hi Bcc: evil@example.com [#5]"),
    ],
)
def test_reply_subject(subject: str | None, ticket: int | None, expected: str) -> None:
    assert reply_subject(subject, ticket) == expected


async def test_no_header_injection_from_a_hostile_subject(smtp: SmtpSink) -> None:
    await sender(smtp).send(
        reply(
            subject="Hi\r\nBcc: evil@example.com",
            in_reply_to="<ok@example.org>\r\nBcc: evil2@example.com",
            references=["<a@b>\nX-Evil: 1", "<fine@example.org>"],
            ticket_id=5,
        )
    )
    assert len(smtp.received) == 1
    got = smtp.received[0]
    assert got.rcpt_tos == ["Dana.Whitfield@gmail.com"]
    msg = got.message
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "Re: Hi Bcc: evil@example.com [#5]"
    assert msg["In-Reply-To"] is None  # not a Message-ID: left out rather than copied
    assert msg["References"] == "<fine@example.org>"
    head = got.data.split(b"\r\n\r\n")[0]
    assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))


@pytest.mark.parametrize(
    "address",
    ["dana@example.org\r\nBcc: evil@example.com", "two@example.org, three@example.org", "", None],
)
async def test_unusable_recipient_is_fatal_and_nothing_is_sent(
    smtp: SmtpSink, address: Any
) -> None:
    with pytest.raises(FatalError):
        await sender(smtp).send(reply(to_email=address))
    assert smtp.received == []


async def test_refused_recipient_is_fatal(smtp: SmtpSink) -> None:
    with pytest.raises(FatalError, match="550"):
        await sender(smtp).send(reply(to_email="reject-me@example.org"))
    assert smtp.received == []


async def test_smtp_down_is_retryable_and_surely_not_sent() -> None:
    c = ImapConnector(
        ImapConnector.Config.model_validate(
            {
                "host": "127.0.0.1",
                "username": "u",
                "password": "p",
                "smtp_port": free_port(),
                "smtp_tls": "none",
                "from_address": "support@acme.example",
            }
        ),
        None,
    )
    with pytest.raises(RetryableError) as info:
        await c.send(reply())
    assert info.value.not_sent is True


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot_tls() -> Iterator[Dovecot]:
    """A Dovecot with a self-signed certificate: STARTTLS on ``port``, TLS on ``tls_port``."""
    missing = dovecot_missing() or (None if shutil.which("openssl") else "openssl not found")
    if missing:
        need("Dovecot with TLS", missing)
    server = Dovecot.start(tls=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["tls", "starttls"])
async def test_imap_over_tls(dovecot_tls: Dovecot, mode: str) -> None:
    await dovecot_tls.append(mail(700))
    port = dovecot_tls.tls_port if mode == "tls" else dovecot_tls.port
    settings = dovecot_tls.settings(tls=mode, port=port, ca_file=dovecot_tls.ca_file)
    c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
    try:
        batch = await c.fetch(None)
    finally:
        await c.close()
    assert "<700.test@example.org>" in ids(batch)


@pytest.mark.parametrize("mode", ["tls", "starttls"])
async def test_imap_refuses_an_untrusted_certificate(dovecot_tls: Dovecot, mode: str) -> None:
    port = dovecot_tls.tls_port if mode == "tls" else dovecot_tls.port
    settings = dovecot_tls.settings(tls=mode, port=port)  # system CAs: self-signed is refused
    c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
    try:
        with pytest.raises(FatalError, match="certificate"):
            await c.fetch(None)
    finally:
        await c.close()


async def test_starttls_required_but_not_offered(dovecot: Dovecot) -> None:
    settings = dovecot.settings(tls="starttls")
    c = ImapConnector(ImapConnector.Config.model_validate(settings), None)
    try:
        with pytest.raises(FatalError, match="STARTTLS"):
            await c.fetch(None)
    finally:
        await c.close()


@pytest.mark.parametrize("mode", ["tls", "starttls"])
async def test_smtp_over_tls(tmp_path: Path, mode: str) -> None:
    if not shutil.which("openssl"):
        need("openssl", "makes the test certificate")
    sink = SmtpSink(tls=mode, cert_dir=tmp_path)
    sink.start()
    try:
        c = sender(sink, smtp_tls=mode, ca_file=sink.ca_file)
        receipt = await c.send(reply())
        assert [r.message["Message-ID"] for r in sink.received] == [receipt.external_id]
        with pytest.raises(FatalError, match="certificate"):
            await sender(sink, smtp_tls=mode).send(reply())
        assert len(sink.received) == 1
    finally:
        sink.stop()


# -- the contract -------------------------------------------------------------------------------


def test_it_is_the_installed_imap_connector() -> None:
    assert load_connector("imap") is ImapConnector  # type: ignore[comparison-overlap]
    c = ImapConnector(
        ImapConnector.Config.model_validate(
            {"host": "h", "username": "u", "password": "p", "from_address": "s@acme.example"}
        ),
        None,
    )
    assert isinstance(c, Connector) and isinstance(c, ReplyingConnector)
    assert c.name == "imap" and c.channel == "email"
    assert "p'" not in repr(c.config) and "**********" in repr(c.config)
    assert c.config.port is None and c.config.tls == "tls" and c.config.batch_size == 50


@pytest.mark.parametrize(
    "bad",
    [
        {"from_address": "Support <support@acme.example>"},
        {"from_address": "support@acme.example\r\nBcc: x@y.z"},
        {"smtp_username": "u"},  # without smtp_password
        {"tls": "ssl"},
        {"mailbox": "INBOX\r\nA1 DELETE INBOX"},
        {"unknown": 1},
    ],
)
def test_config_rejects(bad: dict[str, Any]) -> None:
    settings = {"host": "h", "username": "u", "password": "p", "from_address": "s@acme.example"}
    with pytest.raises(ValidationError):
        ImapConnector.Config.model_validate({**settings, **bad})


async def test_email_complaint_to_approved_reply_end_to_end(
    dovecot: Dovecot, mailbox: str, smtp: SmtpSink, store: Any, config: Any
) -> None:
    """A complaint in the inbox -> ticket and draft -> card in Slack -> an approver clicks
    Approve -> one threaded SMTP reply; the customer's answer threads into the ticket."""
    from email.utils import format_datetime

    from socialcrm.config import Config
    from socialcrm.daemon import Daemon
    from socialcrm.models import Reply, Ticket, utcnow

    # Sent just now: a mail older than backfill_before (24h) would be history, not answered.
    sent = format_datetime(utcnow()).encode()
    complaint = (
        b"From: Carol Customer <carol@example.org>\r\n"
        b"To: support@acme.example\r\n"
        b"Subject: My blender arrived broken\r\n"
        b"Message-ID: <complaint-1@example.org>\r\n"
        b"Date: " + sent + b"\r\n"
        b"\r\n"
        b"Hello, my order 4711 arrived broken and nobody answers my calls. This is awful.\r\n"
    )
    await dovecot.append(complaint, mailbox=mailbox)
    settings = dovecot.settings(
        mailbox=mailbox, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_tls="none"
    )
    async with slack_stand_in() as slack:
        cfg = Config.model_validate(
            {
                "sources": [{"name": "inbox", "type": "imap", "interval": 0, **settings}],
                **slack.settings(),
                "base_dir": config.base_dir,
            }
        )
        daemon = Daemon(cfg, store)
        await daemon.start("127.0.0.1", 0)
        try:
            out = await daemon.poller.poll("inbox")
            assert out.error is None and out.result.tickets_opened == 1
            assert out.result.drafts == 1
            async with store.reader() as s:
                reply = (await s.execute(sa.select(Reply))).scalar_one()
            card = await slack.approve(daemon, reply.id, lambda: bool(smtp.received))
            await asyncio.sleep(0.3)
            assert len(smtp.received) == 1, "one mail, once"
            sent = smtp.received[0].message
            assert smtp.received[0].rcpt_tos == ["carol@example.org"]
            assert sent["In-Reply-To"] == "<complaint-1@example.org>"
            assert "<complaint-1@example.org>" in sent["References"]
            assert sent["Subject"] == f"Re: My blender arrived broken [#{reply.ticket_id}]"
            async with store.reader() as s:
                ticket = await s.get(Ticket, reply.ticket_id)
            assert ticket is not None and ticket.first_response_at is not None
            assert daemon.cards is not None
            await daemon.cards.sync()
            assert "Sent on email" in card.all_text()
            # The customer answers the reply: it threads into the same ticket by In-Reply-To.
            answer = (
                b"From: Carol Customer <carol@example.org>\r\nTo: support@acme.example\r\n"
                b"Subject: " + sent["Subject"].encode() + b"\r\n"
                b"Message-ID: <answer-1@example.org>\r\nIn-Reply-To: "
                + sent["Message-ID"].encode()
                + b"\r\n"
                b"Date: Tue, 03 Mar 2026 09:00:00 +0000\r\n\r\n"
                b"Thanks, it is still broken though.\r\n"
            )
            await dovecot.append(answer, mailbox=mailbox)
            out = await daemon.poller.poll("inbox")
            assert out.result.tickets_threaded == 1 and out.result.tickets_opened == 0
        finally:
            await daemon.stop()


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        # The declared boundary is not the one the body uses.
        (
            'multipart/mixed; boundary="not-used"',
            "--real-one\r\nContent-Type: text/plain\r\n\r\nWhere is order 77?\r\n--real-one--\r\n",
            "Where is order 77?",
        ),
        # No parts at all: the body is the text.
        ("multipart/alternative", "Where is order 78?\r\n", "Where is order 78?"),
    ],
)
def test_a_multipart_without_a_usable_boundary_keeps_its_body(
    content_type: str, body: str, text: str
) -> None:
    raw = (
        "From: Carol <carol@example.org>\r\nSubject: Order\r\n"
        "Message-ID: <mb.1@example.org>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n\r\n{body}"
    ).encode()
    m = parse_email(raw)
    assert m.text == text and m.raw["empty_body"] is False


async def test_send_answers_the_reply_to_address(smtp: SmtpSink) -> None:
    # A contact form sends as no-reply@ with the customer in Reply-To: answer the customer.
    await sender(smtp).send(reply(original={"reply_to": "cora@example.net"}))
    assert smtp.received[-1].rcpt_tos == ["cora@example.net"]
    assert smtp.received[-1].message["To"] == "cora@example.net"
    # A Reply-To that is not one usable address is not followed.
    await sender(smtp).send(reply(original={"reply_to": "a@example.net, b@example.net"}))
    assert smtp.received[-1].rcpt_tos == ["Dana.Whitfield@gmail.com"]


async def test_reply_to_and_in_reply_to_from_the_inbox_to_the_sent_answer(
    dovecot: Dovecot, mailbox: str, smtp: SmtpSink, store: Any, config: Any
) -> None:
    """A contact-form mail (no-reply sender, the customer in Reply-To, an In-Reply-To but no
    References) is answered at the Reply-To address, threaded by RFC 5322 §3.6.4."""
    from socialcrm.config import Config
    from socialcrm.daemon import Daemon
    from socialcrm.models import Reply

    form = (
        b"From: Website <no-reply@forms.example.org>\r\n"
        b"Reply-To: Cora Buyer <cora@example.net>\r\n"
        b"To: support@acme.example\r\n"
        b"Subject: My blender arrived broken\r\n"
        b"Message-ID: <form-2@forms.example.org>\r\n"
        b"In-Reply-To: <earlier-1@acme.example>\r\n"
        + f"Date: {email.utils.formatdate()}\r\n".encode()  # now: not history, so drafted
        + b"\r\n"
        b"Hello, my order 4711 arrived broken and nobody answers my calls. This is awful.\r\n"
    )
    await dovecot.append(form, mailbox=mailbox)
    settings = dovecot.settings(
        mailbox=mailbox, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_tls="none"
    )
    async with slack_stand_in() as slack:
        cfg = Config.model_validate(
            {
                "sources": [{"name": "inbox", "type": "imap", "interval": 0, **settings}],
                **slack.settings(),
                "base_dir": config.base_dir,
            }
        )
        daemon = Daemon(cfg, store)
        await daemon.start("127.0.0.1", 0)
        try:
            out = await daemon.poller.poll("inbox")
            assert out.error is None and out.result.drafts == 1
            async with store.reader() as s:
                reply = (await s.execute(sa.select(Reply))).scalar_one()
            await slack.approve(daemon, reply.id, lambda: bool(smtp.received))
            sent = smtp.received[0]
            assert sent.rcpt_tos == ["cora@example.net"]
            assert sent.message["In-Reply-To"] == "<form-2@forms.example.org>"
            assert sent.message["References"].split() == [
                "<earlier-1@acme.example>",
                "<form-2@forms.example.org>",
            ]
        finally:
            await daemon.stop()
