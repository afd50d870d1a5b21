"""The email support inbox: read over IMAP (aioimaplib), answer over SMTP (aiosmtplib).

Cursor: ``{"uidvalidity": int, "last_uid": int}``. Each fetch EXAMINEs the mailbox (opens it
read-only), asks for ``UID SEARCH UID <last_uid+1>:*`` and fetches at most ``batch_size``
messages with ``BODY.PEEK[]`` (nothing is marked read), oldest first; ``Batch.more`` says that
more are waiting.

UIDVALIDITY: when the server reports another UIDVALIDITY than the cursor holds (the mailbox
was recreated, restored or migrated), the old UIDs mean nothing any more. The connector then
starts over from UID 1 and returns every message again. Nothing is duplicated: a message's
``external_id`` is its Message-ID (or a hash of its content when it has none), so the core's
dedupe on ``(channel, external_id)`` drops the ones it already stored.

The connection is opened on first use, kept between polls and dropped on any error (the next
poll reconnects); ``close()`` logs out. The connector never sleeps and never retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.errors
import email.policy
import email.utils
import fnmatch
import re
import ssl
from collections.abc import Awaitable
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import aiohttp
import aioimaplib
import aiosmtplib
from pydantic import Field, field_validator, model_validator

from connectors.mime import parse_email
from socialcrm.connector import (
    AuthError,
    Batch,
    Channel,
    ConnectorConfig,
    ConnectorError,
    Credential,
    Cursor,
    FatalError,
    MalformedPayload,
    OutboundReply,
    Quarantined,
    RetryableError,
    SentReceipt,
)

Tls = Literal["tls", "starttls", "none"]
_T = TypeVar("_T")

#: IMAP response codes (RFC 5530) that mean "try again later", not "wrong credentials".
_PASSING_CODES = ("UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "OVERQUOTA")
_RESP_CODE = re.compile(rb"^\[([A-Z-]+)")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_FETCH_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_HEADER_MSGID = re.compile(rb"^Message-ID:[ \t]*(<[^<>\s]{1,500}>)", re.IGNORECASE | re.MULTILINE)
#: A Message-ID safe to copy into a header we write: printable ASCII, no brackets inside.
_SAFE_MSGID = re.compile(r"^<[!-;=?-~]{1,994}>$")
_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|antw|r|ref|res|vs)\s*:", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


class ImapConnector:
    """Reads new mail from an IMAP mailbox and sends approved replies over SMTP."""

    name: ClassVar[str] = "imap"
    channel: ClassVar[Channel] = "email"

    class Config(ConnectorConfig):
        """Settings of an email support inbox."""

        host: str
        #: Default: 993 with implicit TLS, 143 otherwise.
        port: int | None = Field(default=None, ge=1, le=65535)
        username: str
        password: Credential
        mailbox: str = "INBOX"
        tls: Tls = "tls"
        #: A CA bundle (PEM) to trust instead of the system's, for a private mail server.
        ca_file: str | None = None
        batch_size: int = Field(default=50, ge=1, le=1000)
        #: Bytes fetched of one message at most (the text comes first; what is cut is
        #: attachments, which are listed, never stored). Bounds memory: a batch holds
        #: up to batch_size x max_message_bytes.
        max_message_bytes: int = Field(default=2_000_000, ge=10_000)
        timeout_s: float = Field(default=30.0, gt=0)
        #: Default: ``host``.
        smtp_host: str | None = None
        #: Default: 465 with implicit TLS, 587 with STARTTLS, 25 without TLS.
        smtp_port: int | None = Field(default=None, ge=1, le=65535)
        #: SMTP logs in only when this is set (often the same as ``username``).
        smtp_username: str | None = None
        smtp_password: Credential | None = None
        smtp_tls: Tls = "tls"
        #: The support address replies come from; mail from it is never read as a customer's.
        from_address: str
        from_name: str | None = None
        #: Senders whose mail is skipped: our own addresses, known auto-responders.
        #: Exact addresses or shell patterns (``*@notifications.example.com``).
        ignore_from: list[str] = Field(default_factory=list)

        @field_validator("host", "smtp_host", "username", "smtp_username", "mailbox")
        @classmethod
        def _one_line(cls, v: str | None) -> str | None:
            if v is not None and (not v.strip() or _CONTROL.search(v)):
                raise ValueError("must be a non-empty single line")
            return v

        @field_validator("from_address")
        @classmethod
        def _address(cls, v: str) -> str:
            v = v.strip()
            name, addr = email.utils.parseaddr(v)
            if name or addr != v or v.count("@") != 1 or _CONTROL.search(v) or " " in v:
                raise ValueError("must be a plain address like support@example.com")
            return v.lower()

        @field_validator("from_name")
        @classmethod
        def _name(cls, v: str | None) -> str | None:
            if v is None:
                return None
            return " ".join(_CONTROL.sub(" ", v).split()) or None

        @field_validator("ignore_from")
        @classmethod
        def _lower(cls, v: list[str]) -> list[str]:
            return [p.strip().lower() for p in v if p.strip()]

        @model_validator(mode="after")
        def _smtp_login(self) -> ImapConnector.Config:
            if self.smtp_username is not None and self.smtp_password is None:
                raise ValueError("smtp_password is required with smtp_username")
            return self

    def __init__(self, config: Config, http: aiohttp.ClientSession | None = None) -> None:
        # Email does not use the HTTP session; the core hands one to every connector.
        self.config = config
        self.http = http
        self._imap: Any = None
        self._lost: asyncio.Future[None] | None = None
        self._ignore = [*config.ignore_from, config.from_address]

    # -- fetch --------------------------------------------------------------------------------

    async def fetch(self, cursor: Cursor | None) -> Batch:
        """Return the next ``batch_size`` messages after the cursor's UID, oldest first."""
        state = dict(cursor or {})
        try:
            client = await self._client()
            uidvalidity = await self._select(client)
            last_uid = _int(state.get("last_uid"))
            if state.get("uidvalidity") is not None and _int(state["uidvalidity"]) != uidvalidity:
                last_uid = 0  # UIDVALIDITY changed: start over; Message-IDs dedupe (see top)
            uids = await self._search(client, last_uid)
            chunk = uids[: self.config.batch_size]
            fetched = await self._fetch_uids(client, chunk) if chunk else []
        except ConnectorError:
            await self._drop()
            raise
        except ssl.SSLCertVerificationError as err:
            await self._drop()
            raise FatalError(f"IMAP {self._where()}: TLS certificate not trusted: {err}") from err
        except (OSError, TimeoutError, aioimaplib.AioImapException) as err:
            await self._drop()
            raise RetryableError(f"IMAP {self._where()}: {err!r}") from err
        batch = Batch(
            cursor={"uidvalidity": uidvalidity, "last_uid": max(chunk, default=last_uid)},
            more=len(uids) > len(chunk),
        )
        for uid, item in fetched:
            self._add(batch, uid, uidvalidity, item)
        return batch

    def _add(self, batch: Batch, uid: int, uidvalidity: int, item: Fetched) -> None:
        try:
            message = parse_email(item.body, received_at=item.internal_date)
        except Exception as err:  # one unreadable mail is quarantined; the batch goes on
            batch.quarantined.append(
                Quarantined(
                    external_id=_header_msgid(item.body),
                    error=f"{self.config.mailbox} UID {uid}: {type(err).__name__}: {err}"[:2000],
                    raw=_keep(item.body),
                )
            )
            return
        sender = message.author.email or ""
        if sender and any(fnmatch.fnmatchcase(sender, p) for p in self._ignore):
            return
        message.raw["imap"] = {
            "mailbox": self.config.mailbox,
            "uid": uid,
            "uidvalidity": uidvalidity,
        }
        if item.size is not None and item.size > len(item.body):
            message.raw["partial"] = {"size": item.size, "fetched": len(item.body)}
        batch.messages.append(message)

    async def _client(self) -> Any:
        """The open, logged-in connection, opened now if there is none or it was lost."""
        if (
            self._imap is not None
            and self._lost is not None
            and not self._lost.done()
            and self._imap.get_state() in (aioimaplib.AUTH, aioimaplib.SELECTED)
        ):
            return self._imap
        await self._drop()
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._lost = lost = loop.create_future()
        if cfg.tls == "tls":
            client = aioimaplib.IMAP4_SSL(
                host=cfg.host, port=cfg.port or 993, timeout=cfg.timeout_s, ssl_context=self._ssl()
            )
        else:
            client = aioimaplib.IMAP4(host=cfg.host, port=cfg.port or 143, timeout=cfg.timeout_s)
        self._imap = client

        def on_lost(exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(None)

        client.protocol.conn_lost_cb = on_lost
        await self._call(client.wait_hello_from_server())
        if cfg.tls == "starttls":
            await self._starttls(client)
        resp = await self._call(client.login(cfg.username, cfg.password.get_secret_value()))
        if resp.result != "OK":
            code = _code(resp.lines)
            detail = _text(resp.lines)
            if code in _PASSING_CODES:
                raise RetryableError(f"IMAP login refused for now ({code}): {detail}")
            raise AuthError(f"IMAP login refused for {cfg.username}: {detail}")
        return client

    async def _starttls(self, client: Any) -> None:
        """Upgrade the plain connection (aioimaplib has no STARTTLS of its own)."""
        if "STARTTLS" not in client.protocol.capabilities:
            raise FatalError(f"IMAP {self._where()} does not offer STARTTLS")
        timeout_s = self.config.timeout_s
        command = aioimaplib.Command("STARTTLS", client.protocol.new_tag())
        resp = await self._call(asyncio.wait_for(client.protocol.execute(command), timeout_s))
        if resp.result != "OK":
            raise FatalError(f"IMAP STARTTLS refused: {_text(resp.lines)}")
        loop = asyncio.get_running_loop()
        transport = await self._call(
            loop.start_tls(
                client.protocol.transport,
                client.protocol,
                self._ssl(),
                server_hostname=self.config.host,
                ssl_handshake_timeout=timeout_s,
            )
        )
        client.protocol.transport = transport
        # Capabilities learnt before TLS are not to be trusted (RFC 3501 6.2.1).
        await self._call(asyncio.wait_for(client.protocol.capability(), timeout_s))

    async def _select(self, client: Any) -> int:
        """EXAMINE the mailbox (read-only: no flag, not even \\Recent, changes); its UIDVALIDITY."""
        resp = await self._call(client.examine(_mailbox_arg(self.config.mailbox)))
        if resp.result == "OK":
            # aioimaplib tracks the state only for SELECT; EXAMINE opens the mailbox the same.
            client.protocol.state = aioimaplib.SELECTED
        else:
            code = _code(resp.lines)
            if code in _PASSING_CODES:
                raise RetryableError(f"cannot open {self.config.mailbox} now: {_text(resp.lines)}")
            raise FatalError(f"cannot open mailbox {self.config.mailbox}: {_text(resp.lines)}")
        for line in resp.lines:
            if isinstance(line, bytes | bytearray) and (m := _UIDVALIDITY.search(line)):
                return int(m.group(1))
        raise MalformedPayload(f"IMAP server sent no UIDVALIDITY for {self.config.mailbox}")

    async def _search(self, client: Any, last_uid: int) -> list[int]:
        resp = await self._call(client.uid_search("UID", f"{last_uid + 1}:*", charset=None))
        if resp.result != "OK":
            raise RetryableError(f"IMAP UID SEARCH failed: {_text(resp.lines)}")
        uids: set[int] = set()
        for line in resp.lines[:-1]:
            if not isinstance(line, bytes):
                continue
            words = line.split()
            if words[:1] == [b"SEARCH"]:
                words = words[1:]
            if all(w.isdigit() for w in words):
                uids.update(int(w) for w in words)
        # "n:*" always matches the highest UID, even when it is below n (RFC 3501 6.4.8).
        return sorted(u for u in uids if u > last_uid)

    async def _fetch_uids(self, client: Any, uids: list[int]) -> list[tuple[int, Fetched]]:
        parts = f"(UID RFC822.SIZE INTERNALDATE BODY.PEEK[]<0.{self.config.max_message_bytes}>)"
        resp = await self._call(client.uid("fetch", _uid_set(uids), parts))
        if resp.result != "OK":
            raise RetryableError(f"IMAP UID FETCH failed: {_text(resp.lines)}")
        found: dict[int, _Fetched] = {}
        current: _Fetched | None = None
        for line in resp.lines:
            if isinstance(line, bytearray):  # a literal: the message itself
                if current is not None and current.body is None:
                    current.body = bytes(line)
                continue
            if not isinstance(line, bytes):
                continue
            if _FETCH_START.match(line):
                current = _Fetched()
                found_uid = _FETCH_UID.search(line)
                current.uid = int(found_uid.group(1)) if found_uid else None
            elif current is not None and current.uid is None and (m := _FETCH_UID.search(line)):
                current.uid = int(m.group(1))
            if current is None:
                continue
            if (m := _FETCH_SIZE.search(line)) is not None:
                current.size = int(m.group(1))
            if (m := _FETCH_DATE.search(line)) is not None:
                current.internal_date = _internal_date(m.group(1).decode("ascii", "replace"))
            if current.uid is not None and current.body is not None:
                found.setdefault(current.uid, current)
            if re.search(rb"BODY\[\](?:<\d+>)? (?:NIL|\"\")", line) and current.body is None:
                current.body = b""
        wanted = set(uids)
        return [
            (uid, Fetched(item.body, item.size, item.internal_date))
            for uid, item in sorted(found.items())
            if uid in wanted and item.body is not None
        ]

    async def _call(self, aw: Awaitable[_T]) -> _T:
        """Await an IMAP step, but give up at once when the server hangs up (BYE, restart)."""
        lost = self._lost
        task = asyncio.ensure_future(aw)
        if lost is None:
            return await task
        waiters: set[asyncio.Future[Any]] = {task, lost}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise RetryableError(f"IMAP {self._where()} closed the connection")

    async def _drop(self) -> None:
        """Forget the connection without a goodbye (it failed or is gone) and close it."""
        client, self._imap = self._imap, None
        lost, self._lost = self._lost, None
        transport = getattr(client.protocol, "transport", None) if client is not None else None
        if transport is not None and not transport.is_closing():
            transport.close()
            if lost is not None and not lost.done():
                # TLS closes in a round trip (close_notify): let it finish, or the socket
                # outlives the connector. Not a sleep: this returns once the socket is closed.
                await asyncio.wait({lost}, timeout=min(self.config.timeout_s, 5.0))
        if lost is not None and not lost.done():
            lost.cancel()

    async def close(self) -> None:
        """Log out and close the IMAP connection, if one is open."""
        client = self._imap
        if client is not None and self._lost is not None and not self._lost.done():
            with contextlib.suppress(
                ConnectorError, OSError, TimeoutError, aioimaplib.AioImapException
            ):
                await self._call(asyncio.wait_for(client.logout(), self.config.timeout_s))
        await self._drop()

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file)

    def _where(self) -> str:
        port = self.config.port or (993 if self.config.tls == "tls" else 143)
        return f"{self.config.host}:{port}"

    # -- send ---------------------------------------------------------------------------------

    async def send(self, reply: OutboundReply) -> SentReceipt:
        """Send an approved reply as a threaded email; the receipt holds its Message-ID."""
        try:
            message, message_id, recipient = self.build_reply(reply)
            data = message.as_bytes(policy=_SMTP_POLICY)
        except (ValueError, TypeError, email.errors.MessageError) as err:
            raise FatalError(f"cannot write this reply as an email: {err}") from err
        cfg = self.config
        mode = cfg.smtp_tls
        port = cfg.smtp_port or {"tls": 465, "starttls": 587, "none": 25}[mode]
        host = cfg.smtp_host or cfg.host
        smtp = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            use_tls=mode == "tls",
            start_tls=mode == "starttls",
            timeout=cfg.timeout_s,
            tls_context=self._ssl() if mode != "none" else None,
        )
        try:
            try:
                await smtp.connect()
                if cfg.smtp_username is not None and cfg.smtp_password is not None:
                    await smtp.login(cfg.smtp_username, cfg.smtp_password.get_secret_value())
            except aiosmtplib.SMTPAuthenticationError as err:
                raise AuthError(f"SMTP login refused for {cfg.smtp_username}: {err}") from err
            except aiosmtplib.SMTPResponseException as err:
                raise _smtp_refusal(err, "SMTP server refused the session") from err
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
                if _untrusted(err):
                    raise FatalError(f"SMTP {host}:{port}: TLS certificate not trusted") from err
                # Nothing was handed over yet: the reply surely did not go out.
                raise RetryableError(
                    f"SMTP {host}:{port} unreachable: {err!r}", not_sent=True
                ) from err
            try:
                await smtp.sendmail(cfg.from_address, [recipient], data)
            except aiosmtplib.SMTPRecipientsRefused as err:
                codes = [e.code for e in err.recipients]
                if codes and all(400 <= c < 500 for c in codes):
                    raise RetryableError(f"SMTP recipient deferred: {err}", not_sent=True) from err
                raise FatalError(f"SMTP recipient refused: {err}") from err
            except aiosmtplib.SMTPResponseException as err:
                raise _smtp_refusal(err, "SMTP server refused the message") from err
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
                # The connection broke while the message was on its way: it may have been sent.
                raise RetryableError(f"SMTP {host}:{port} failed mid-send: {err!r}") from err
        finally:
            if smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await smtp.quit()
            smtp.close()
        return SentReceipt(external_id=message_id)

    def build_reply(self, reply: OutboundReply) -> tuple[EmailMessage, str, str]:
        """The reply email, its Message-ID and its recipient; no customer text reaches a header
        unchecked (control characters go, the email package encodes the rest)."""
        cfg = self.config
        recipient = _reply_address(reply)
        domain = cfg.from_address.rsplit("@", 1)[1]
        message_id = email.utils.make_msgid(domain=domain)
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = Address(display_name=cfg.from_name or "", addr_spec=cfg.from_address)
        msg["To"] = Address(addr_spec=recipient)
        msg["Subject"] = reply_subject(reply.subject, reply.ticket_id)
        msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id
        parent = reply.in_reply_to if _SAFE_MSGID.match(reply.in_reply_to or "") else None
        refs = [r for r in reply.references if _SAFE_MSGID.match(r)]
        if parent is not None:
            msg["In-Reply-To"] = parent
            if parent not in refs:
                refs.append(parent)
        refs = list(dict.fromkeys(refs))
        if len(refs) > 20:  # keep the thread root and the newest (RFC 5322 3.6.4)
            refs = [refs[0], *refs[-19:]]
        if refs:
            msg["References"] = " ".join(refs)
        # Ask Exchange and friends not to answer with out-of-office notes (RFC 3834 spirit).
        msg["X-Auto-Response-Suppress"] = "OOF, AutoReply"
        msg.set_content(reply.text, cte="quoted-printable")
        return msg, message_id, recipient


#: Long Message-IDs in References must not be folded into encoded words (SMTP allows 998).
_SMTP_POLICY = email.policy.SMTP.clone(max_line_length=998)


class Fetched(NamedTuple):
    """One message as fetched: its bytes (perhaps cut at max_message_bytes) and metadata."""

    body: bytes
    size: int | None
    internal_date: datetime | None


class _Fetched:
    """One message of a UID FETCH answer, while it is being read."""

    __slots__ = ("body", "internal_date", "size", "uid")

    def __init__(self) -> None:
        self.uid: int | None = None
        self.body: bytes | None = None
        self.size: int | None = None
        self.internal_date: datetime | None = None


def reply_subject(original: str | None, ticket_id: int | None) -> str:
    """``Re: <subject> [#<ticket>]``: one ``Re:``, the tag once, on a single safe line."""
    subject = " ".join(_CONTROL.sub(" ", original or "").split())[:900]
    if not subject:
        subject = "your message"
    if not _REPLY_PREFIX.match(subject):
        subject = f"Re: {subject}"
    if ticket_id is not None:
        tag = f"[#{ticket_id}]"
        if tag not in subject:
            subject = f"{subject} {tag}"
    return subject


def _reply_address(reply: OutboundReply) -> str:
    """Where the answer goes: the mail's Reply-To when it is one usable address (contact forms,
    no-reply senders), else the customer's address (RFC 5322 §3.6.2)."""
    reply_to = reply.original.get("reply_to")
    if isinstance(reply_to, str) and reply_to:
        try:
            return _recipient(reply_to)
        except FatalError:
            pass  # a broken Reply-To: the sender's own address still works
    return _recipient(reply.to_email)


def _recipient(value: str | None) -> str:
    """The customer's address, checked: one plain address, nothing that could split a header."""
    if not value:
        raise FatalError("the customer has no email address to reply to")
    found = email.utils.getaddresses([value])
    addr = found[0][1].strip() if len(found) == 1 else ""
    if (
        _CONTROL.search(value)
        or not addr
        or addr.count("@") != 1
        or len(addr) > 320
        or any(c.isspace() or c in "<>,;\"'()" for c in addr)
    ):
        raise FatalError(f"not a usable email address: {value[:100]!r}")
    return addr


def _smtp_refusal(err: aiosmtplib.SMTPResponseException, what: str) -> ConnectorError:
    text = f"{what}: {err.code} {err.message}"
    if 400 <= err.code < 500:
        return RetryableError(text, not_sent=True)
    if err.code in (530, 534, 535):
        return AuthError(text)
    return FatalError(text)


def _untrusted(err: BaseException) -> bool:
    """Whether a certificate check failed somewhere down the chain of causes."""
    seen: BaseException | None = err
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _code(lines: list[Any]) -> str | None:
    for line in lines:
        if isinstance(line, bytes | bytearray) and (m := _RESP_CODE.match(bytes(line))):
            return m.group(1).decode("ascii")
    return None


def _text(lines: list[Any]) -> str:
    return " ".join(
        bytes(x).decode("utf-8", "replace") for x in lines if isinstance(x, bytes | bytearray)
    )[:300]


def _uid_set(uids: list[int]) -> str:
    """``1:3,7,9:10`` from sorted UIDs."""
    runs: list[str] = []
    start = prev = uids[0]
    for uid in [*uids[1:], -1]:
        if uid == prev + 1:
            prev = uid
            continue
        runs.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    return ",".join(runs)


def _internal_date(value: str) -> datetime | None:
    try:
        return datetime.strptime(value.strip(), "%d-%b-%Y %H:%M:%S %z").astimezone(UTC)
    except ValueError:
        return None


def _mailbox_arg(name: str) -> str:
    """A mailbox name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    encoded = "".join(out)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _header_msgid(raw: bytes) -> str | None:
    head = raw[:65536].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    m = _HEADER_MSGID.search(head)
    return m.group(1).decode("ascii", "replace") if m else None


def _keep(raw: bytes) -> str:
    """The raw mail as text for the quarantine: UTF-8 as it is, anything else in base64."""
    try:
        text = raw.decode("utf-8")
        if "\x00" not in text:
            return text
    except UnicodeDecodeError:
        pass
    return "base64:" + base64.b64encode(raw).decode("ascii")
