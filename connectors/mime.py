"""One email (RFC 5322 bytes) to one InboundMessage: the text the customer wrote this time.

Mail in the wild is messy, so every step has a fallback rather than an error: a part's
charset is a hint, not a promise (``iso-8859-1`` that is really windows-1252, unknown names,
undeclared 8-bit), HTML-only mail is turned into readable text, and the quoted history of a
reply ("On ... wrote:", Outlook's "From: ... Sent: ..." block, ``>`` lines, the signature)
is trimmed. Only a payload that is not an email at all raises ``MalformedEmail``.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.header
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message
from typing import Any

from bs4 import BeautifulSoup, Comment, Declaration, Doctype, ProcessingInstruction, Tag

from socialcrm.connector import Author, InboundMessage

#: Longest text part handled; InboundMessage keeps 40,000 characters, markup needs room.
MAX_PART_CHARS = 1_000_000
#: Longest References list kept (the first id and the newest ones, as RFC 5322 advises).
MAX_REFERENCES = 50
#: Prefix of the external id of a message that has no usable Message-ID.
SYNTHETIC_PREFIX = "synthetic:"


class MalformedEmail(ValueError):
    """The payload is not an email (no header block); it goes to quarantine, not lost."""


# -- charsets ---------------------------------------------------------------------------------

#: Labels whose real content is, in practice, windows-1252 (the WHATWG encoding standard maps
#: them so too) or a superset codec Python knows under another name.
_CHARSET_ALIASES = {
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "windows-1252": "cp1252",
    "x-user-defined": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "tis-620": "cp874",
    "windows-874": "cp874",
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
}
#: Labels that are a guess anyway: try UTF-8 first, then windows-1252.
_LOOSE = {"cp1252"}
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]+")


def decode_bytes(data: bytes, declared: str | None) -> tuple[str, str]:
    """Decode a body part, trusting its charset label only as far as the bytes allow.

    Returns the text and the codec that was used.
    """
    label = (declared or "").strip().strip("\"'").lower()
    codec = _CHARSET_ALIASES.get(label, label)
    if data.isascii():
        if codec.startswith("utf-16") or codec.startswith("utf-32") or codec == "utf-7":
            return data.decode(codec, "replace"), codec
        if "2022" not in codec:
            return data.decode("ascii"), "ascii"
    if not codec or codec in _LOOSE or codec in ("utf-8", "utf_8"):
        try:
            return data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
        if codec in ("utf-8", "utf_8") and _UTF8_MULTIBYTE.search(data):
            return data.decode("utf-8", "replace"), "utf-8"
        return data.decode("cp1252", "replace"), "cp1252"
    try:
        codecs.lookup(codec)
    except LookupError:
        # An unknown name ("x-unknown", "utf-8q", a typo): the bytes decide.
        return decode_bytes(data, None)
    try:
        return data.decode(codec, "replace"), codec
    except (UnicodeError, LookupError, ValueError):  # codecs like utf-7 raise on bad input
        return decode_bytes(data, None)


_SURROGATES = re.compile("[\udc80-\udcff]+")


def fix_surrogates(text: str) -> str:
    """Decode the raw 8-bit bytes the email parser left as surrogates (UTF-8, else cp1252)."""

    def _one(m: re.Match[str]) -> str:
        data = m.group().encode("utf-8", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", "replace")

    return _SURROGATES.sub(_one, text)


# -- headers ----------------------------------------------------------------------------------


def _raw_header(msg: Message, name: str) -> str | None:
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return str(value)
    return None


def header(msg: Message, name: str) -> str | None:
    """One header as clean text: RFC 2047 decoded, 8-bit decoded, unfolded, no CR/LF."""
    raw = _raw_header(msg, name)
    if raw is None:
        return None
    value: str
    if _SURROGATES.search(raw):
        value = fix_surrogates(raw)  # undeclared 8-bit header: decode the bytes ourselves
    else:
        try:
            value = str(msg.get(name, ""))
        except Exception:  # the header parser has edge cases that raise; keep the raw text
            value = raw
    value = fix_surrogates(value)
    return " ".join(value.split())


def _address(msg: Message, name: str) -> tuple[str | None, str | None]:
    """(display name, lower-cased address) of the first address in a header."""
    raw = _raw_header(msg, name)
    if raw is None:
        return None, None
    pairs: list[tuple[str, str]] = []
    if not _SURROGATES.search(raw):
        try:
            parsed: Any = msg.get(name)
            pairs = [(a.display_name, a.addr_spec) for a in parsed.addresses]
        except Exception:
            pairs = []
    if not pairs:
        text = header(msg, name) or ""
        pairs = [(n, a) for n, a in email.utils.getaddresses([text]) if n or a]
    if not pairs:
        return None, None
    raw_name, addr = pairs[0]
    if not raw_name:  # "addr (Real Name)": the old comment style the header parser ignores
        raw_name = email.utils.parseaddr(" ".join(fix_surrogates(raw).split()))[0]
        if "=?" in raw_name:
            raw_name = _decode_words(raw_name)
    display = " ".join(fix_surrogates(raw_name).split()).strip("\"' ")
    addr = addr.strip().lower()
    if not addr or "@" not in addr or len(addr) > 320 or any(c.isspace() for c in addr):
        addr = ""
    return (display[:512] or None), (addr or None)


_MSGID = re.compile(r"<([^<>\s]+)>")


def message_ids(value: str | None) -> list[str]:
    """The ``<id>`` tokens of a Message-ID, In-Reply-To or References header, in order."""
    if not value:
        return []
    ids = [f"<{m}>" for m in _MSGID.findall(value)]
    if not ids:
        # Some generators forget the brackets.
        ids = [f"<{t}>" for t in value.split() if "@" in t and "<" not in t and ">" not in t]
    return [i for i in ids if len(i) <= 998]


def _references(value: str | None) -> list[str]:
    seen: set[str] = set()
    refs = []
    for ref in message_ids(value):
        if ref not in seen:
            seen.add(ref)
            refs.append(ref)
    if len(refs) > MAX_REFERENCES:
        refs = [refs[0], *refs[-(MAX_REFERENCES - 1) :]]
    return refs


def _sane(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = datetime.now(UTC)
    if moment.year < 1990 or moment > now + timedelta(days=1):
        return None
    return moment.astimezone(UTC)


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return _sane(email.utils.parsedate_to_datetime(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _received_date(msg: Message) -> datetime | None:
    """When the last hop received it: the date after the ';' of the top Received header."""
    raw = _raw_header(msg, "Received")
    if raw and ";" in raw:
        return _parse_date(" ".join(raw.rsplit(";", 1)[1].split()))
    return None


# -- auto-replies and bounces -----------------------------------------------------------------

_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-AutoReply-From")
_DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")


def auto_reason(msg: Message, from_addr: str | None) -> str | None:
    """Why this looks machine-sent (auto-reply, bounce, list mail), or None for a person."""
    submitted = (header(msg, "Auto-Submitted") or "").split(";")[0].strip().lower()
    if submitted and submitted != "no":
        return f"Auto-Submitted: {submitted}"
    precedence = (header(msg, "Precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    for name in _AUTO_HEADERS:
        if header(msg, name) is not None:
            return name
    if msg.get_content_type() == "multipart/report":
        return "delivery report"
    if from_addr and from_addr.split("@", 1)[0] in _DAEMONS:
        return f"sender {from_addr}"
    if (header(msg, "Return-Path") or "").replace(" ", "") == "<>":
        return "null return path"
    if header(msg, "List-Id") is not None or header(msg, "List-Unsubscribe") is not None:
        return "mailing list"
    return None


# -- HTML to text -----------------------------------------------------------------------------

_NL = "\ue000"
_PARA = "\ue001"
_DROP_TAGS = (
    "script",
    "style",
    "head",
    "title",
    "meta",
    "link",
    "noscript",
    "template",
    "img",
    "svg",
    "object",
    "iframe",
    "map",
    "button",
    "input",
    "select",
    "textarea",
)
_PARA_TAGS = (
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "ul",
    "ol",
    "dl",
    "blockquote",
    "pre",
)
_LINE_TAGS = (
    "address",
    "article",
    "aside",
    "center",
    "caption",
    "dd",
    "div",
    "dt",
    "fieldset",
    "figure",
    "figcaption",
    "footer",
    "form",
    "header",
    "hr",
    "main",
    "nav",
    "section",
    "tr",
    "tbody",
    "thead",
    "tfoot",
)
_HIDDEN = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all|max-height\s*:\s*0(?![.\d])",
    re.IGNORECASE,
)
#: Where mail clients put the quoted history of a reply in HTML.
_QUOTE_SELECTORS = "blockquote, div.gmail_quote, .moz-cite-prefix, .yahoo_quoted"


def html_to_text(html: str, *, drop_quotes: bool = False) -> str:
    """Readable text from an HTML mail: no tags, scripts or styles; line breaks kept."""
    html = html.replace(_NL, "").replace(_PARA, "")
    soup = BeautifulSoup(html, "html.parser")
    for node in soup.find_all(
        string=lambda s: isinstance(s, Comment | Declaration | Doctype | ProcessingInstruction)
    ):
        node.extract()
    for tag in soup.find_all(_DROP_TAGS):
        if isinstance(tag, Tag) and not tag.decomposed:
            tag.decompose()
    for tag in soup.find_all(True):
        if not isinstance(tag, Tag) or tag.decomposed:
            continue
        style = tag.get("style")
        if tag.has_attr("hidden") or (isinstance(style, str) and _HIDDEN.search(style)):
            tag.decompose()
    if drop_quotes:
        for tag in soup.select(_QUOTE_SELECTORS):
            if not tag.decomposed:
                tag.decompose()
    for tag in soup.find_all("pre"):
        if isinstance(tag, Tag):
            for s in list(tag.find_all(string=True)):
                s.replace_with(str(s).replace("\n", _NL))
    for tag in soup.find_all("br"):
        tag.replace_with(_NL)
    for tag in soup.find_all(True):
        if not isinstance(tag, Tag):
            continue
        if tag.name in _PARA_TAGS:
            tag.insert_before(_PARA)
            tag.insert_after(_PARA)
        elif tag.name in _LINE_TAGS:
            tag.insert_before(_NL)
            tag.insert_after(_NL)
        elif tag.name == "li":
            tag.insert_before(f"{_NL}- ")
        elif tag.name in ("td", "th"):
            tag.insert_after(" ")
    text = "".join(str(s) for s in soup.find_all(string=True))
    text = re.sub(r"[ \t\r\n\f\v]+", " ", text)
    text = text.replace(_PARA, "\n\n").replace(_NL, "\n")
    return _tidy(text)


def _tidy(text: str) -> str:
    """Strip each line, collapse runs of spaces and of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    lines = [re.sub(r"[ \t\u00a0\u2007\u202f]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# -- reply history ----------------------------------------------------------------------------

#: Fwd/Fw, WG (de), TR (fr), RV (es), ENC (pt), VL (fi), Doorst (nl). Not "VS": a Finnish reply.
_FORWARD_SUBJECT = re.compile(r"^\s*(?:fwd?|wg|tr|rv|enc|vl|doorst)\s*:", re.IGNORECASE)
_FORWARD_LINE = re.compile(
    r"^(?:-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transf[ée]r[ée]|"
    r"mensaje reenviado|messaggio inoltrato|doorgestuurd bericht|mensagem encaminhada|"
    r"vidarebefordrat meddelande|転送されたメッセージ)\s*-{2,}|begin forwarded message:|"
    r"anfang der weitergeleiteten nachricht:|d[ée]but du message r[ée]exp[ée]di[ée]\s*:|"
    r"inizio messaggio inoltrato:|comienzo del mensaje reenviado:)$",
    re.IGNORECASE,
)
_ORIGINAL_LINE = re.compile(
    r"^-{2,}\s*(?:original message|urspr[üu]ngliche nachricht|message d'origine|"
    r"mensaje original|messaggio originale|oorspronkelijk bericht|mensagem original|"
    r"originalmeddelande|alkuper[äa]inen viesti|opprinnelig melding|p[ůu]vodn[íi] zpr[áa]va|"
    r"wiadomo[śs][ćc] oryginalna|исходное сообщение)\s*-{2,}$",
    re.IGNORECASE,
)
_ATTRIBUTION_LEAD = re.compile(
    r"^(?:on|am|le|el|il|op|em|den|d[eë]n|w dniu|dne|på|pada|в|在)\b", re.IGNORECASE
)
_ATTRIBUTION_VERB = re.compile(
    r"(?:wrote|schrieb|a [ée]crit|escribi[óo]|ha scritto|schreef|escreveu|skrev|napisa[łl]|"
    r"написал|napsal|kirjoitti|写道|寫道)",
    re.IGNORECASE,
)
_HAS_ADDRESS = re.compile(r"<?[^\s<>@]+@[^\s<>@]+\.[^\s<>@]+>?")
_BRACKETED_ADDRESS = re.compile(r"<[^\s<>@]+@[^\s<>@]+>")
#: A date or a time: attributions carry one, a customer's own "... wrote:" rarely does.
_DATE_OR_TIME = re.compile(r"\d{1,2}:\d{2}|\b(?:19|20)\d{2}\b|\d年")
_OUTLOOK_FROM = re.compile(
    r"^\*?(?:from|de|von|van|da|från|fra|od|от|差出人|发件人|寄件者)\s*:\*?\s*\S", re.IGNORECASE
)
_OUTLOOK_SENT = re.compile(
    r"^\*?(?:sent|date|envoy[ée]|gesendet|datum|enviado|enviada|inviato|data|verzonden|"
    r"skickat|sendt|wysłano|отправлено|送信日時|发送时间|日期)\s*:",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"^(?:_{5,}|-{5,})$")
_MOBILE_FOOTER = re.compile(
    r"^(?:sent from (?:my |mail for )|get outlook for |envoy[ée] de mon |von meinem .* gesendet|"
    r"enviado desde mi |inviato da(?:l mio)? |verzonden (?:vanaf|met) |enviado do meu |"
    r"iphoneから送信|skickat från min )",
    re.IGNORECASE,
)


def is_forward(subject: str | None, text: str) -> bool:
    """True when the customer forwarded a message: its content is what they sent us."""
    if subject and _FORWARD_SUBJECT.match(subject):
        return True
    lines = text.split("\n")
    for i, line in enumerate(lines):
        s = line.strip()
        if _FORWARD_LINE.match(s):
            return True
        if s.startswith(">") or _quote_start(lines, i, s) is not None:
            return False  # a reply's quote comes first: whatever follows is history
    return False


def _is_attribution(line: str) -> bool:
    if len(line) > 400 or not line.rstrip().endswith((":", "\uff1a")):
        return False
    if not _DATE_OR_TIME.search(line):
        return False
    if _ATTRIBUTION_LEAD.match(line) and _ATTRIBUTION_VERB.search(line):
        return True
    # Any language: "<date> <time> Name <address>:" (Gmail in Japanese, Korean, ...).
    return bool(_BRACKETED_ADDRESS.search(line))


def _quote_start(lines: list[str], i: int, s: str) -> tuple[str, int] | None:
    """Whether line ``i`` starts quoted history: ("block" | "attribution", lines it spans)."""
    if not s:
        return None
    if _ORIGINAL_LINE.match(s):
        return "block", 1
    if _OUTLOOK_FROM.match(s):
        following = [x.strip() for x in lines[i + 1 : i + 5]]
        if any(_OUTLOOK_SENT.match(x) for x in following):
            return "block", 1
    if _is_attribution(s):
        return "attribution", 1
    # Gmail wraps a long attribution over two lines.
    if i + 1 < len(lines) and (_ATTRIBUTION_LEAD.match(s) or _HAS_ADDRESS.search(s)):
        joined = f"{s} {lines[i + 1].strip()}"
        if _is_attribution(joined) and not _is_attribution(lines[i + 1].strip()):
            return "attribution", 2
    return None


def _quoted(line: str) -> bool:
    return line.lstrip(" ").startswith(">")


def trim_reply(text: str) -> tuple[str, bool]:
    """The new part of a reply: quoted history, ``>`` lines and the signature cut off.

    Returns the text and whether anything was cut.
    """
    lines = text.split("\n")
    kept: list[str] | None = None
    for i, line in enumerate(lines):
        found = _quote_start(lines, i, line.strip())
        if found is None:
            continue
        kind, span = found
        above = [x for x in lines[:i] if x.strip() and not _quoted(x)]
        if kind == "attribution" and not above:
            # Nothing written above the attribution: an inline (interleaved) answer. Keep the
            # answers between the quotes; the ">" lines go below.
            kept = lines[:i] + lines[i + span :]
            break
        cut = i
        # The separator line Outlook puts above "From: ... Sent: ...".
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and _SEPARATOR.match(lines[j].strip()):
            cut = j
        kept = lines[:cut]
        break
    kept = [line for line in (lines if kept is None else kept) if not _quoted(line)]
    for i, line in enumerate(kept):
        if line.rstrip() == "--":
            kept = kept[:i]
            break
    while kept and not kept[-1].strip():
        kept.pop()
    if kept and _MOBILE_FOOTER.match(kept[-1].strip()):
        kept.pop()
    result = _tidy("\n".join(kept))
    return result, result != _tidy(text)


def unflow(text: str, *, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed: join soft-broken lines, remove space-stuffing."""
    out: list[str] = []
    pending = ""
    pending_depth = -1
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:]
        if body.startswith(" "):
            body = body[1:]
        if pending and depth != pending_depth:
            out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
            pending = ""
        if body.endswith(" ") and body != "-- ":
            pending += body[:-1] if delsp else body
            pending_depth = depth
            continue
        full = pending + body
        pending = ""
        out.append(">" * depth + (" " if depth else "") + full)
    if pending:
        out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
    return "\n".join(out)


# -- the MIME tree ----------------------------------------------------------------------------


@dataclass
class _Walk:
    texts: list[tuple[str, str]] = field(default_factory=list)  # (subtype, text)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    forwarded: list[dict[str, Any]] = field(default_factory=list)
    inline_images: int = 0
    charsets: list[str] = field(default_factory=list)


def _payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset=["']?([A-Za-z0-9_.:-]{1,40})""", re.I)


def _part_text(part: Message, w: _Walk) -> str:
    data = _payload(part)
    declared = part.get_content_charset()
    if declared is None and part.get_content_subtype() == "html":
        # No charset in the header: the page's own <meta charset> is the next best hint.
        found = _META_CHARSET.search(data[:4096])
        declared = found.group(1).decode("ascii") if found else None
    text, used = decode_bytes(data, declared)
    w.charsets.append(used)
    text = text[:MAX_PART_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    if part.get_content_subtype() == "plain":
        params = {k.lower(): v.lower() for k, v in part.get_params(failobj=[]) if v}
        if params.get("format") == "flowed":
            text = unflow(text, delsp=params.get("delsp") == "yes")
    return text


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if name and "=?" in name:
        name = _decode_words(name)
    return " ".join(fix_surrogates(name).split())[:255] if name else None


def _decode_words(text: str) -> str:
    """RFC 2047 encoded words where the header parser does not look (comments, file names)."""
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return text


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _is_text_body(part: Message) -> bool:
    # A text part marked inline is shown as the body by every mail client, file name or not
    # (Apple Mail and some phones name them); without a disposition, a name makes it a file.
    disposition = _disposition(part)
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and disposition != "attachment"
        and (disposition == "inline" or not _filename(part))
    )


def _has_plain(part: Message) -> bool:
    """Whether this alternative holds a non-blank text/plain body."""
    if part.get_content_type().startswith("message/"):
        return False
    if part.is_multipart():
        return any(_has_plain(p) for p in _children(part))
    return (
        part.get_content_type() == "text/plain"
        and _is_text_body(part)
        and bool(_payload(part).strip())
    )


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _walk(part: Message, w: _Walk, depth: int = 0) -> None:
    """Collect the body text parts, attachments and forwarded messages of one MIME tree."""
    if depth > 30:  # a MIME bomb; what was found so far is enough
        return
    ctype = part.get_content_type()
    if ctype in ("message/rfc822", "message/global"):
        inner = _children(part)
        if inner:
            _forwarded(inner[0], w, depth)
        return
    if ctype.startswith("message/"):
        return  # delivery-status, disposition-notification: machine reports, not text
    if ctype.startswith("multipart/") and not part.is_multipart():
        _unsplit(part, w, depth)
        return
    if part.is_multipart():
        kids = _children(part)
        if ctype == "multipart/alternative" and kids:
            plain = [k for k in kids if _has_plain(k)]
            chosen = plain[0] if plain else kids[-1]
            _walk(chosen, w, depth + 1)
            for k in kids:  # attachments hidden in an unchosen alternative still count
                if k is not chosen:
                    _list_attachments(k, w, depth + 1)
            return
        for k in kids:
            _walk(k, w, depth + 1)
        return
    if _is_text_body(part):
        w.texts.append((part.get_content_subtype(), _part_text(part, w)))
        return
    _attachment(part, w)


#: A delimiter line of a multipart body: ``--`` and a boundary (RFC 2046 §5.1.1: 1 to 70
#: characters, not ending in a space).
_DELIMITER = re.compile(
    rb"^--([0-9A-Za-z'()+_,./:=?][ -~]{0,68}[!-~]|[0-9A-Za-z'()+_,./:=?])[ \t]*\r?$", re.M
)


def _unsplit(part: Message, w: _Walk, depth: int) -> None:
    """A multipart whose boundary is missing or wrong: find the real one, else keep the text.

    The parser leaves such a body as one unsplit string; read as an attachment, the whole
    body was lost and only the subject stored.
    """
    data = _payload(part)
    for found in _DELIMITER.finditer(data[:MAX_PART_CHARS]):
        boundary = found.group(1).removesuffix(b"--")
        if not boundary or data.count(b"--" + boundary) < 2 or b'"' in boundary:
            continue
        head = b'Content-Type: %s; boundary="%s"\r\n\r\n' % (
            part.get_content_type().encode("ascii", "replace"),
            boundary,
        )
        inner = email.message_from_bytes(head + data, policy=email.policy.default)
        if inner.is_multipart() and _children(inner):
            _walk(inner, w, depth + 1)
            return
    text, used = decode_bytes(data, part.get_content_charset())
    w.charsets.append(used)
    text = text[:MAX_PART_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    if text.strip():
        w.texts.append(("plain", text))


def _list_attachments(part: Message, w: _Walk, depth: int) -> None:
    if depth > 30:
        return
    if part.get_content_type().startswith("message/"):
        return
    if part.is_multipart():
        for k in _children(part):
            _list_attachments(k, w, depth + 1)
    elif not _is_text_body(part):
        _attachment(part, w)


def _attachment(part: Message, w: _Walk) -> None:
    ctype = part.get_content_type()
    name = _filename(part)
    if ctype.startswith("image/") and _disposition(part) != "attachment" and not name:
        w.inline_images += 1
        return
    if ctype.startswith("image/") and part.get("Content-ID") and _disposition(part) != "attachment":
        w.inline_images += 1  # an image the HTML shows by cid: is decoration, not a file
        return
    w.attachments.append({"filename": name, "content_type": ctype, "size": len(_payload(part))})


def _forwarded(inner: Message, w: _Walk, depth: int) -> None:
    sub = _Walk()
    _walk(inner, sub, depth + 1)
    name, addr = _address(inner, "From")
    text = _body_text(sub, trim=False)
    w.forwarded.append(
        {
            "from": addr,
            "name": name,
            "subject": header(inner, "Subject"),
            "date": header(inner, "Date"),
        }
    )
    w.attachments.extend(sub.attachments)
    w.inline_images += sub.inline_images
    heading = "---------- Forwarded message ----------"
    meta = [
        f"From: {header(inner, 'From') or ''}",
        f"Date: {header(inner, 'Date') or ''}",
        f"Subject: {header(inner, 'Subject') or ''}",
    ]
    w.texts.append(("forwarded", "\n".join([heading, *meta, "", text])))


def _body_text(w: _Walk, *, trim: bool) -> str:
    parts = []
    for subtype, text in w.texts:
        if subtype == "html":
            parts.append(html_to_text(text, drop_quotes=trim))
        else:
            parts.append(_tidy(text))
    return "\n\n".join(p for p in parts if p)


# -- the message ------------------------------------------------------------------------------


def synthetic_id(raw: bytes, msg: Message) -> str:
    """A stable id for a message without a Message-ID: a hash of date, from, subject and body."""
    return f"{SYNTHETIC_PREFIX}{content_digest(raw, msg)[:48]}"


def content_digest(raw: bytes, msg: Message) -> str:
    """A hash of what the sender wrote (date, from, subject, body), not of how it travelled
    (Received and other transport headers), so the same mail read twice has the same one."""
    head, sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    if not sep:
        body = head
    digest = hashlib.sha256()
    for name in ("Date", "From", "Subject"):
        digest.update((_raw_header(msg, name) or "").encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()


def parse_email(raw: bytes, *, received_at: datetime | None = None) -> InboundMessage:
    """Turn one email into an InboundMessage with the text the customer wrote this time.

    ``received_at`` (the IMAP INTERNALDATE) is the fallback when the Date header is missing
    or nonsense. Raises ``MalformedEmail`` when the payload is not an email at all.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(msg, EmailMessage | Message):  # pragma: no cover - the parser's contract
        raise MalformedEmail("the email parser returned no message")
    names = {k.lower() for k in msg}
    if not names or not names & {"from", "date", "subject", "message-id", "to"}:
        raise MalformedEmail("no mail header fields: not an email")

    subject = header(msg, "Subject")
    name, addr = _address(msg, "From")
    _, reply_to = _address(msg, "Reply-To")
    ids = message_ids(header(msg, "Message-ID"))
    synthetic = not ids or len(ids[0]) > 512
    external_id = synthetic_id(raw, msg) if synthetic else ids[0]
    parents = message_ids(header(msg, "In-Reply-To"))
    in_reply_to = parents[0] if parents else None
    references = _references(header(msg, "References"))
    date_header = header(msg, "Date")
    created = _parse_date(date_header) or _sane(received_at) or _received_date(msg)

    w = _Walk()
    _walk(msg, w)
    untrimmed = _body_text(w, trim=False)
    forwarded = bool(w.forwarded) or is_forward(subject, untrimmed)
    trimmed = False
    if forwarded:
        text = untrimmed
    else:
        text, trimmed = trim_reply(_body_text(w, trim=True))
        trimmed = trimmed or text != untrimmed
    empty = not text
    if empty and subject:
        text = subject  # a subject-only mail: the subject is what the customer wrote
    reason = auto_reason(msg, addr)

    raw_info: dict[str, Any] = {
        "message_id": None if synthetic else external_id,
        "from": addr,
        "reply_to": reply_to if reply_to and reply_to != addr else None,
        "to": [a for _, a in email.utils.getaddresses([header(msg, "To") or ""]) if a][:50],
        "cc": [a for _, a in email.utils.getaddresses([header(msg, "Cc") or ""]) if a][:50],
        "date": date_header,
        "content_type": msg.get_content_type(),
        "charsets": sorted(set(w.charsets)),
        "attachments": w.attachments[:100],
        "inline_images": w.inline_images,
        "forwarded": w.forwarded[:20] or forwarded,
        "trimmed": trimmed,
        "empty_body": empty,
        "auto": reason is not None,
        "auto_reason": reason,
        "synthetic_id": synthetic,
        # Some mailers and forwarders reuse a Message-ID: the store tells such mails apart.
        "content_digest": content_digest(raw, msg),
        "size": len(raw),
    }
    if created is None:
        raw_info["date_fallback"] = "now"
    return InboundMessage(
        channel="email",
        external_id=external_id,
        text=text,
        author=Author(user_id=addr, name=name, email=addr),
        created_at=created or datetime.now(UTC),
        in_reply_to=in_reply_to,
        references=references,
        subject=subject[:998] if subject else None,
        direct=True,
        raw=raw_info,
    )
