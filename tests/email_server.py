"""Real mail servers for the email connector's tests: a throwaway Dovecot, an aiosmtpd sink.

Dovecot runs unprivileged in the foreground (``dovecot -F -c <conf>``) with everything under
one temp dir: config, passwd-file, base_dir, state_dir, log and the Maildir. As root, Dovecot
refuses to run its login processes as root, so they run as ``dovenull`` and the mail process
as ``dovecot`` (both made by the package); as anyone else, everything runs as that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aioimaplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
USER = "alice"
PASSWORD = "s3cret-pw"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_certificate(where: Path) -> None:
    """A self-signed certificate for 127.0.0.1 and localhost: cert.pem and key.pem."""
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(where / "key.pem"),
            "-out",
            str(where / "cert.pem"),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def dovecot_missing() -> str | None:
    """Why Dovecot cannot run here, or None when it can."""
    if not os.path.exists(DOVECOT):
        return f"{DOVECOT} not found (apt-get install dovecot-imapd)"
    if not os.access(DOVECOT, os.X_OK):
        return f"{DOVECOT} is not executable"
    return None


def _accounts() -> tuple[str, str, int, int]:
    """(login user, internal user, mail uid, mail gid) Dovecot can run as here."""
    if os.geteuid() != 0:
        me = getpass.getuser()
        return me, me, os.getuid(), os.getgid()
    for login, internal in (("dovenull", "dovecot"), ("nobody", "nobody")):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(login)
            owner = pwd.getpwnam(internal)
            return login, internal, owner.pw_uid, owner.pw_gid
    raise RuntimeError("no unprivileged user for Dovecot (dovenull/dovecot or nobody)")


CONFIG = """\
# A throwaway Dovecot for tests: plain IMAP on 127.0.0.1, one passwd-file user, Maildir.
protocols = imap
listen = 127.0.0.1
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
# Refused logins answer at once (the default waits 2s to slow down guessing). Dovecot's
# anvil still delays the next login from 127.0.0.1 by a few seconds after one; fine here.
auth_failure_delay = 0
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
# No chroot: an unprivileged Dovecot (a developer's user) cannot chroot.
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
"""


@dataclass
class Dovecot:
    """One Dovecot instance with one user, started and stopped by a fixture."""

    root: Path
    port: int = 0
    #: The implicit-TLS (imaps) port, when started with ``tls=True``; STARTTLS is on ``port``.
    tls_port: int = 0
    user: str = USER
    password: str = PASSWORD
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, *, tls: bool = False) -> Dovecot:
        """Write the config, start ``dovecot -F`` and wait until it accepts connections.

        With ``tls``, a self-signed certificate for 127.0.0.1 is made (``ca_file`` trusts it)
        and Dovecot offers STARTTLS on ``port`` and implicit TLS on ``tls_port``.
        """
        # Short path: Dovecot's unix sockets live in base_dir (sun_path is 108 bytes).
        root = Path(tempfile.mkdtemp(prefix="sc-dovecot-"))
        root.chmod(0o755)  # the unprivileged login and mail processes must get in
        server = cls(root=root, port=free_port(), tls_port=free_port() if tls else 0)
        ssl_conf = "ssl = no"
        if tls:
            make_certificate(root)
            ssl_conf = f"ssl = yes\nssl_cert = <{root}/cert.pem\nssl_key = <{root}/key.pem"
        login, internal, uid, gid = _accounts()
        home = root / "home" / server.user
        home.mkdir(parents=True)
        (root / "run").mkdir()
        (root / "state").mkdir()
        if os.geteuid() == 0:
            os.chown(home, uid, gid)
        (root / "users").write_text(
            f"{server.user}:{{PLAIN}}{server.password}:{uid}:{gid}::{home}::\n"
        )
        conf = root / "dovecot.conf"
        conf.write_text(
            CONFIG.format(
                instance=f"sc-test-{server.port}",
                root=root,
                port=server.port,
                tls_port=server.tls_port,
                ssl=ssl_conf,
                login_user=login,
                internal_user=internal,
                internal_group=_group_name(pwd.getpwnam(internal).pw_gid),
            )
        )
        server.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server._wait_ready()
        return server

    @property
    def ca_file(self) -> str:
        """The certificate to trust for a server started with ``tls=True``."""
        return str(self.root / "cert.pem")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited at start: {self._stderr()}\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s,
            ):
                if s.recv(64).startswith(b"* OK"):
                    return
            time.sleep(0.05)  # test fixture only: waiting for a server we just started
        self.stop()
        raise RuntimeError(f"dovecot did not answer on port {self.port}: {self.log()}")

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode("utf-8", "replace")

    def log(self) -> str:
        """Dovecot's log so far (for failure messages)."""
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Connector settings pointing at this server (plain IMAP on 127.0.0.1)."""
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "username": self.user,
            "password": self.password,
            "tls": "none",
            "from_address": "support@acme.example",
            "from_name": "Acme Support",
        }
        base.update(overrides)
        return base

    # -- mailbox administration over IMAP (what a mail client or an admin would do) ---------

    async def _admin(self) -> Any:
        client = aioimaplib.IMAP4(host="127.0.0.1", port=self.port, timeout=10)
        await client.wait_hello_from_server()
        resp = await client.login(self.user, self.password)
        assert resp.result == "OK", resp
        return client

    @staticmethod
    async def _bye(client: Any) -> None:
        with contextlib.suppress(Exception):
            await client.logout()
        transport = client.protocol.transport
        if transport is not None:
            transport.close()

    async def append(self, *messages: bytes, mailbox: str = "INBOX") -> None:
        """Deliver messages with IMAP APPEND, in order."""
        client = await self._admin()
        try:
            for raw in messages:
                resp = await client.append(raw, mailbox=mailbox)
                assert resp.result == "OK", resp
        finally:
            await self._bye(client)

    async def create(self, mailbox: str) -> None:
        """Create a mailbox."""
        client = await self._admin()
        try:
            resp = await client.create(mailbox)
            assert resp.result == "OK", resp
        finally:
            await self._bye(client)

    async def recreate(self, mailbox: str) -> None:
        """Delete and create a mailbox again: it comes back empty with a new UIDVALIDITY."""
        client = await self._admin()
        try:
            resp = await client.delete(mailbox)
            assert resp.result == "OK", resp
            resp = await client.create(mailbox)
            assert resp.result == "OK", resp
        finally:
            await self._bye(client)

    async def flags(self, mailbox: str = "INBOX") -> list[bytes]:
        """The FLAGS of every message (to check that reading changed nothing)."""
        client = await self._admin()
        try:
            resp = await client.select(mailbox)
            assert resp.result == "OK", resp
            resp = await client.fetch("1:*", "(FLAGS)")
            return [line for line in resp.lines if isinstance(line, bytes) and b"FLAGS" in line]
        finally:
            await self._bye(client)


class ImapProxy:
    """A TCP proxy in front of Dovecot that misbehaves on the next connection when asked.

    Faults: ``server_error`` (SELECT/EXAMINE answered ``NO [UNAVAILABLE]``), ``timeout`` (the server
    never says hello) and ``truncated`` (the connection drops in the middle of a FETCH answer).
    """

    FAULTS = frozenset({"server_error", "timeout", "truncated"})

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.fault: str | None = None
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        fault, self.fault = self.fault, None
        self._writers.append(client_w)
        if fault == "timeout":
            await client_r.read()  # say nothing until the client gives up
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.append(server_w)
        fetching = asyncio.Event()

        async def up() -> None:
            while data := await client_r.read(65536):
                words = data.split(b" ", 2)
                opening = len(words) > 1 and words[1].upper() in (b"SELECT", b"EXAMINE")
                if fault == "server_error" and opening:
                    client_w.write(words[0] + b" NO [UNAVAILABLE] Mailbox is busy, try later\r\n")
                    await client_w.drain()
                    continue
                if b"FETCH" in data.upper():
                    fetching.set()
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def down() -> None:
            while data := await server_r.read(65536):
                if fault == "truncated" and fetching.is_set():
                    client_w.write(data[: max(1, len(data) // 2)])
                    await client_w.drain()
                    break
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            server_w.close()

        await asyncio.gather(up(), down(), return_exceptions=True)


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


@dataclass
class Received:
    """One message the SMTP sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        """The message as parsed by the email package."""
        parsed = message_from_bytes(self.data, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Recorder:
    """Keeps each message; refuses recipients whose address starts with "reject"."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower().startswith("reject"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        self.received.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=[str(r) for r in envelope.rcpt_tos],
                data=bytes(data),
            )
        )
        return "250 OK queued"


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that keeps every message it is given.

    ``tls="starttls"`` offers STARTTLS, ``tls="tls"`` speaks TLS from the first byte; both
    with a self-signed certificate in ``cert_dir`` (``ca_file`` trusts it).
    """

    def __init__(self, tls: str = "none", cert_dir: Path | None = None) -> None:
        self.port = free_port()
        self._recorder = _Recorder()
        self.ca_file: str | None = None
        kwargs: dict[str, Any] = {}
        if tls != "none":
            assert cert_dir is not None
            make_certificate(cert_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
            self.ca_file = str(cert_dir / "cert.pem")
            if tls == "starttls":
                kwargs["tls_context"] = context
            else:
                kwargs["ssl_context"] = context
        self._controller = Controller(
            self._recorder, hostname="127.0.0.1", port=self.port, **kwargs
        )

    @property
    def received(self) -> list[Received]:
        """What was delivered so far."""
        return self._recorder.received

    def start(self) -> None:
        """Start listening (aiosmtpd runs its own loop in a thread)."""
        self._controller.start()

    def stop(self) -> None:
        """Stop listening."""
        self._controller.stop()
