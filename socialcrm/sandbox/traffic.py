"""Deterministic, realistic brand mentions: the traffic behind the demo, tests and benchmarks.

``TrafficGenerator(seed).messages(n)`` yields ``InboundMessage`` objects shaped the way the X,
Mastodon, Reddit, email (IMAP), review-feed (RSS) and webhook connectors produce them: the same
ids, thread links, languages and author fields, with texts composed from templates and slot
fillers. All randomness comes from one ``random.Random(seed)`` and all time from ``start``, never
the wall clock, so the same seed gives byte-identical output. Every call replays the stream from
its beginning, so ``messages(300)`` is a prefix of ``messages(5000)``.

Generated e-mail addresses and web links use the reserved ``.example`` domain, so nothing made
here can reach a real inbox or site even if a demo is wired to a real mail server.
"""

from __future__ import annotations

import base64
import bisect
import functools
import html
import itertools
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Final, Literal, NamedTuple, TypeVar

from socialcrm.connector import Author, Channel, InboundMessage

Kind = Literal[
    "praise",
    "question",
    "complaint",
    "churn",
    "legal",
    "spam",
    "chatter",
    "foreign",
    "minimal",
    "sarcasm",
]
Sentiment = Literal["positive", "negative", "neutral"]
Role = Literal["regular", "foreign", "bot", "vip"]

#: Share of messages per channel, by design.
CHANNEL_SHARES: Final[dict[Channel, float]] = {
    "x": 0.40,
    "mastodon": 0.15,
    "reddit": 0.15,
    "email": 0.20,
    "rss": 0.05,
    "webhook": 0.05,
}

#: Share of messages per kind, by design. ``churn`` is angry VIPs and churn threats, ``legal``
#: legal and safety words, ``foreign`` anything not in English, ``minimal`` an emoji or a link.
KIND_SHARES: Final[dict[Kind, float]] = {
    "praise": 0.20,
    "question": 0.20,
    "complaint": 0.25,
    "churn": 0.05,
    "legal": 0.01,
    "spam": 0.07,
    "chatter": 0.10,
    "foreign": 0.07,
    "minimal": 0.03,
    "sarcasm": 0.02,
}

#: Columns of the known-customers CSV, in order.
CUSTOMER_COLUMNS: Final[tuple[str, ...]] = (
    "name",
    "email",
    "tier",
    "segment",
    "lifetime_value",
    "tags",
    "x_handle",
    "mastodon_handle",
    "reddit_handle",
    "do_not_contact",
    "lifecycle_stage",
)

DEFAULT_START: Final = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

_NEGATIVE_KINDS: Final = frozenset({"complaint", "churn", "legal", "sarcasm"})

_T = TypeVar("_T")


class Mention(NamedTuple):
    """One generated message and the truth behind it (what the generator meant it to be)."""

    message: InboundMessage
    kind: Kind
    #: Complaint subject (delivery, billing, bug, staff) or, for ``foreign``, the intent.
    topic: str | None
    sentiment: Sentiment
    #: Language the text is really written in (the platform's ``lang`` may differ or be missing).
    lang: str
    #: Person behind the message; the same number on every channel that person uses.
    author_id: int
    vip: bool
    #: Text treatments applied: typos, caps, emoji, long.
    styles: tuple[str, ...]
    #: True while a simulated outage drives a spike of complaints.
    incident: bool


# ---------------------------------------------------------------------------------------------
# Mix of channels and kinds. Each channel leans towards some kinds (reviews praise and complain,
# e-mail carries the churn threats and legal letters); iterative proportional fitting turns those
# leanings into per-channel kind weights whose totals still match both share tables above.

_AFFINITY: Final[dict[Channel, dict[Kind, float]]] = {
    "x": {
        "praise": 1.0, "question": 1.0, "complaint": 1.0, "churn": 1.0, "legal": 0.8,
        "spam": 1.5, "chatter": 1.3, "foreign": 1.2, "minimal": 1.5, "sarcasm": 1.5,
    },
    "mastodon": {
        "praise": 1.0, "question": 0.9, "complaint": 1.0, "churn": 0.7, "legal": 0.6,
        "spam": 0.8, "chatter": 1.4, "foreign": 1.5, "minimal": 1.2, "sarcasm": 1.3,
    },
    "reddit": {
        "praise": 0.8, "question": 1.1, "complaint": 1.2, "churn": 0.6, "legal": 1.0,
        "spam": 0.7, "chatter": 1.5, "foreign": 0.4, "minimal": 0.8, "sarcasm": 1.5,
    },
    "email": {
        "praise": 0.6, "question": 1.3, "complaint": 1.2, "churn": 1.6, "legal": 1.8,
        "spam": 0.8, "chatter": 0.4, "foreign": 0.8, "minimal": 0.4, "sarcasm": 0.4,
    },
    "rss": {
        "praise": 1.6, "question": 0.15, "complaint": 1.3, "churn": 0.5, "legal": 0.8,
        "spam": 0.5, "chatter": 0.2, "foreign": 0.6, "minimal": 0.5, "sarcasm": 1.0,
    },
    "webhook": {
        "praise": 0.4, "question": 1.6, "complaint": 1.3, "churn": 1.0, "legal": 1.5,
        "spam": 1.0, "chatter": 0.3, "foreign": 0.6, "minimal": 0.6, "sarcasm": 0.2,
    },
}  # fmt: skip


def _kind_tables() -> dict[Channel, tuple[tuple[Kind, ...], tuple[float, ...]]]:
    kinds = tuple(KIND_SHARES)
    joint = {
        c: [CHANNEL_SHARES[c] * KIND_SHARES[k] * _AFFINITY[c][k] for k in kinds]
        for c in CHANNEL_SHARES
    }
    for _ in range(100):
        for c, row in joint.items():
            scale = CHANNEL_SHARES[c] / sum(row)
            joint[c] = [v * scale for v in row]
        for i, k in enumerate(kinds):
            scale = KIND_SHARES[k] / sum(row[i] for row in joint.values())
            for row in joint.values():
                row[i] *= scale
    tables: dict[Channel, tuple[tuple[Kind, ...], tuple[float, ...]]] = {}
    for c, row in joint.items():
        total = sum(row)
        cum = list(itertools.accumulate(v / total for v in row))
        cum[-1] = 1.0
        tables[c] = (kinds, tuple(cum))
    return tables


_KIND_TABLES: Final = _kind_tables()
_CHANNEL_LIST: Final[tuple[Channel, ...]] = tuple(CHANNEL_SHARES)
_CHANNEL_CUM: Final[tuple[float, ...]] = (
    *itertools.accumulate(list(CHANNEL_SHARES.values())[:-1]),
    1.0,
)

# ---------------------------------------------------------------------------------------------
# People.

_EN_FIRST: Final = (
    "James", "Mary", "Olivia", "Liam", "Noah", "Emma", "Ava", "Sophia", "Mia", "Ethan", "Lucas",
    "Amelia", "Harper", "Aiden", "Chloe", "Priya", "Arjun", "Wei", "Mei", "Fatima", "Omar",
    "Aisha", "Kwame", "Chidi", "Zoe", "Ryan", "Megan", "Tyler", "Jessica", "Daniel", "Sarah",
    "Michael", "Emily", "David", "Laura", "Chris", "Rachel", "Jordan", "Taylor", "Sam", "Alex",
    "Nina", "Tom", "Grace", "Ben", "Hannah", "Jack", "Ruby", "Leo", "Isla", "Kofi", "Siobhan",
    "Connor", "Dmitri", "Anya", "Marek", "Rosa", "Tariq", "Imani", "Declan",
)  # fmt: skip
_EN_LAST: Final = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Nguyen", "Patel", "Kim", "Chen", "Singh", "O'Brien", "Murphy", "Kowalski", "Okafor",
    "Mensah", "Walsh", "Cohen", "Novak", "Rossi", "Khan", "Ali", "Hughes", "Evans", "Campbell",
    "Reid", "Foster", "Bennett", "Price", "Brooks", "Sanders", "Ward", "Hayes", "Fischer",
    "Okonkwo", "Byrne", "Lindqvist", "Haddad", "Morales", "Friedman", "Duong",
)  # fmt: skip
_NAMES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "en": (_EN_FIRST, _EN_LAST),
    "es": (
        ("Sofía", "Mateo", "Valentina", "Santiago", "Lucía", "Diego", "Camila", "Alejandro",
         "Martina", "Javier", "Paula", "Carlos", "Elena", "Pablo"),
        ("García", "Martínez", "López", "Sánchez", "Pérez", "Gómez", "Fernández", "Ruiz", "Díaz",
         "Moreno", "Álvarez", "Romero", "Torres", "Navarro"),
    ),
    "fr": (
        ("Camille", "Louis", "Léa", "Hugo", "Chloé", "Jules", "Manon", "Gabriel", "Inès", "Arthur",
         "Élodie", "Théo", "Margaux", "Antoine"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
         "Moreau", "Simon", "Laurent", "Lefèvre", "Garnier"),
    ),
    "de": (
        ("Lukas", "Anna", "Leon", "Mia", "Finn", "Lena", "Jonas", "Hannah", "Felix", "Laura",
         "Maximilian", "Sophie", "Jürgen", "Sabine"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
         "Schulz", "Hoffmann", "Koch", "Richter", "Schröder", "Neumann"),
    ),
    "pt": (
        ("João", "Maria", "Gabriel", "Ana", "Pedro", "Beatriz", "Lucas", "Juliana", "Rafael",
         "Larissa", "Thiago", "Fernanda", "Bruno", "Camila"),
        ("Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
         "Lima", "Gomes", "Costa", "Ribeiro", "Carvalho", "Almeida"),
    ),
    "ja": (
        ("Haruto", "Yui", "Sota", "Hina", "Ren", "Aoi", "Yuto", "Sakura", "Kenji", "Misaki",
         "Takumi", "Yuki"),
        ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura",
         "Kobayashi", "Kato"),
    ),
}  # fmt: skip
_JA_KANJI: Final[dict[str, str]] = {
    "Haruto": "陽翔", "Yui": "結衣", "Sota": "蒼太", "Hina": "陽菜", "Ren": "蓮", "Aoi": "葵",
    "Yuto": "悠斗", "Sakura": "さくら", "Kenji": "健二", "Misaki": "美咲", "Takumi": "拓海",
    "Yuki": "由紀", "Sato": "佐藤", "Suzuki": "鈴木", "Takahashi": "高橋", "Tanaka": "田中",
    "Watanabe": "渡辺", "Ito": "伊藤", "Yamamoto": "山本", "Nakamura": "中村",
    "Kobayashi": "小林", "Kato": "加藤",
}  # fmt: skip
_FOREIGN_LANGS: Final[dict[Channel, tuple[tuple[str, ...], tuple[float, ...]]]] = {
    "x": (("es", "pt", "ja", "fr", "de"), (0.30, 0.50, 0.70, 0.85, 1.0)),
    "mastodon": (("de", "fr", "ja", "es", "pt"), (0.30, 0.55, 0.75, 0.90, 1.0)),
}
_FOREIGN_LANGS_OTHER: Final = (("es", "fr", "de", "pt", "ja"), (0.25, 0.45, 0.65, 0.85, 1.0))

_MAIL_DOMAINS: Final[dict[str, tuple[str, ...]]] = {
    "en": ("gmail.example", "gmail.example", "gmail.example", "outlook.example", "yahoo.example",
           "icloud.example", "hotmail.example", "proton.example", "aol.example"),
    "es": ("gmail.example", "hotmail-es.example", "yahoo-es.example", "outlook.example"),
    "fr": ("orange.example", "free.example", "gmail.example", "laposte.example"),
    "de": ("gmx.example", "web-de.example", "t-online.example", "gmail.example"),
    "pt": ("gmail.example", "uol.example", "bol.example", "hotmail.example"),
    "ja": ("yahoo-jp.example", "gmail.example", "docomo.example"),
}  # fmt: skip
_COMPANIES: Final = (
    ("Northwind Traders", "northwind.example"),
    ("Contoso", "contoso.example"),
    ("Fabrikam", "fabrikam.example"),
    ("Tailspin Toys", "tailspintoys.example"),
    ("Adventure Works", "adventure-works.example"),
    ("Wide World Importers", "wideworldimporters.example"),
    ("Litware", "litware.example"),
    ("Proseware", "proseware.example"),
    ("Woodgrove Bank", "woodgrovebank.example"),
    ("Blue Yonder Airlines", "blueyonder.example"),
)
_JOB_TITLES: Final = (
    "Operations Manager", "Head of Procurement", "Office Manager", "Founder", "Purchasing Lead",
    "CTO", "Facilities Coordinator", "Marketing Director", "Store Manager",
)  # fmt: skip
_MASTODON_INSTANCES: Final[dict[str, tuple[str, ...]]] = {
    "en": ("mastodon.social", "mastodon.social", "fosstodon.org", "hachyderm.io", "mstdn.social",
           "mas.to", "mastodon.online", "infosec.exchange", "techhub.social"),
    "de": ("chaos.social", "norden.social", "troet.cafe", "mastodon.social"),
    "fr": ("piaille.fr", "mastodon.social", "framapiaf.org"),
    "ja": ("mstdn.jp", "pawoo.net", "fedibird.com"),
    "es": ("masto.es", "mastodon.social"),
    "pt": ("mastodon.com.br", "bolha.us"),
}  # fmt: skip
_HOBBIES: Final = ("runs", "cooks", "codes", "travels", "reads", "bakes", "plays", "draws", "hikes")
_REDDIT_WORDS: Final = (
    ("Spare", "Quiet", "Lucky", "Salty", "Brave", "Sleepy", "Curious", "Fuzzy", "Silent", "Odd"),
    ("Artichoke", "Otter", "Pancake", "Walrus", "Teapot", "Falcon", "Noodle", "Badger", "Pickle"),
)
_BOT_WORDS: Final = (
    "crypto", "airdrop", "giveaway", "free", "promo", "deals", "nft", "moon", "gains", "bonus",
    "reward", "win",
)  # fmt: skip
_BOT_NAMES: Final = (
    "🎁 Giveaway Alerts", "Crypto Whale 🐳", "Daily Deals Bot", "FREE GIFTS 2026",
    "Web3 Airdrops 🚀", "Promo Hunter", "Elon Giveaway 💰", "Follower Boost ✅", "Gift Card Drops",
)  # fmt: skip
_BOT_DOMAINS: Final = (
    "promo-mail.example",
    "seo-agency.example",
    "mailer.example",
    "cheap-leads.example",
)

# ---------------------------------------------------------------------------------------------
# Slot fillers, by language ("en" is the fallback). Templates name them as ``{slot}``.

_FILL: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "en": {
        "city": ("Denver", "Leeds", "Austin", "Manchester", "Toronto", "Dublin", "Chicago",
                 "Seattle", "Bristol", "Melbourne", "Atlanta", "Glasgow", "Phoenix", "Boston",
                 "Vancouver", "Cardiff", "Portland", "Birmingham", "San Diego", "Edinburgh"),
        "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        "when": ("on Monday", "on Tuesday", "on Friday", "yesterday", "last Friday",
                 "last week", "on Saturday"),
        "duration": ("3 days", "two weeks", "10 days", "a month", "five days", "over a week",
                     "6 weeks", "48 hours", "nine days", "three weeks"),
        "wait": ("45 minutes", "an hour", "two hours", "20 minutes", "90 minutes",
                 "over an hour", "35 minutes"),
        "feature": ("checkout", "the cart", "login", "order tracking", "the rewards page",
                    "the payment screen", "my order history", "search"),
        "error": ("error 503", "'Something went wrong'", "a blank white screen",
                  "error code E-1042", "'payment declined' (it isn't)", "a 504 Gateway Timeout",
                  "an endless spinner"),
        "competitor": ("Globex", "Initech", "Umbrella Corp", "Hooli", "Wonka", "Vandelay",
                       "Soylent", "Cyberdyne"),
        "food": ("oat bars", "trail mix cups", "protein cookies", "peanut butter cups",
                 "granola bars", "fruit snacks", "energy bites"),
        "relative": ("mum", "dad", "sister", "brother", "wife", "husband", "partner",
                     "daughter", "son", "grandma", "best friend"),
        "country": ("Canada", "Ireland", "Australia", "New Zealand", "Germany", "Mexico",
                    "Japan", "Brazil", "Norway", "South Africa", "Singapore", "the UAE"),
        "staff_name": _EN_FIRST,
        "big_amount": ("$5,000", "$12k", "ten grand", "$8,000", "$20,000", "$3,500"),
        "emoji_pos": ("🙌", "❤️", "😍", "🎉", "👏", "🙏", "😊", "💯", "✨", "", ""),
        "emoji_neg": ("😡", "🤬", "😤", "😠", "👎", "🙄", "", ""),
        "emoji_sarc": ("🙃", "🙄", "👏👏", "😂", ""),
        "coin": ("BTC", "ETH", "SOL", "DOGE", "USDT"),
        "coin_amount": ("0.5", "2", "1000", "0.25", "10"),
        "gift": ("$500", "$1,000", "$250", "$100"),
        "q": ("1", "2", "3", "4"),
        "pct": ("2", "3", "4", "6", "9", "11"),
        "outlet": ("the Daily Business", "RetailWire", "the Evening Post", "a local podcast",
                   "a consumer magazine"),
    },
    "es": {
        "city": ("Madrid", "Barcelona", "Sevilla", "Valencia", "Ciudad de México", "Bogotá"),
        "duration": ("tres días", "dos semanas", "un mes", "diez días"),
        "wait": ("diez minutos", "media hora", "un día"),
        "feature": ("el pago", "el carrito", "el inicio de sesión"),
        "error": ("el error 503", "una pantalla en blanco"),
        "country": ("México", "Argentina", "Chile", "Colombia", "Perú"),
    },
    "fr": {
        "city": ("Paris", "Lyon", "Marseille", "Toulouse", "Lille", "Bordeaux", "Montréal"),
        "day": ("lundi", "samedi", "dimanche", "mercredi"),
        "duration": ("trois jours", "deux semaines", "un mois", "dix jours"),
        "wait": ("dix minutes", "une demi-heure", "une journée"),
        "feature": ("le paiement", "le panier", "mes commandes"),
        "error": ("l'erreur 503", "une page blanche"),
        "country": ("Belgique", "Suisse", "Italie", "Espagne"),
    },
    "de": {
        "city": ("Berlin", "Hamburg", "München", "Köln", "Frankfurt", "Leipzig", "Wien"),
        "day": ("Samstag", "Sonntag", "Montag", "Mittwoch"),
        "duration": ("drei Tagen", "zwei Wochen", "einem Monat", "zehn Tagen"),
        "wait": ("zehn Minuten", "einer halben Stunde", "einem Tag"),
        "feature": ("den Warenkorb", "die Bezahlseite", "meine Bestellungen"),
        "error": ("Fehler 503", "eine leere Seite"),
        "country": ("Österreich", "Luxemburg", "Polen", "Dänemark"),
    },
    "pt": {
        "city": ("São Paulo", "Rio de Janeiro", "Belo Horizonte", "Curitiba", "Lisboa",
                 "Porto Alegre"),
        "duration": ("três dias", "duas semanas", "um mês", "dez dias"),
        "wait": ("dez minutos", "meia hora", "um dia"),
        "feature": ("o carrinho", "a tela de pagamento", "meus pedidos"),
        "error": ("erro 503", "uma tela em branco"),
        "country": ("Portugal", "Angola", "Moçambique", "Cabo Verde"),
    },
    "ja": {
        "city": ("東京", "大阪", "名古屋", "福岡", "札幌", "横浜"),
        "duration": ("3日", "2週間", "1ヶ月", "10日"),
        "wait": ("10分", "30分", "1日"),
        "feature": ("決済画面", "カート", "注文履歴"),
        "error": ("エラー503", "真っ白な画面"),
        "country": ("沖縄", "北海道", "海外", "離島"),
    },
}  # fmt: skip

_PRODUCTS: Final = (
    "{brand} Air Fryer XL", "SmartKettle Pro", "{brand} Home Hub", "Trailrunner backpack",
    "noise-cancelling headset", "{brand} Blender 3000", "robot vacuum", "standing desk",
    "{brand} Fitness Band", "coffee grinder", "electric toothbrush", "ergonomic chair",
    "smart doorbell", "{brand} Kids Tablet", "{brand} Buds case", "cast iron pan",
    "weighted blanket", "{brand} Water Bottle", "espresso machine", "air purifier",
)  # fmt: skip
_PRICES: Final = (
    12.99, 19.99, 24.50, 34.99, 49.99, 59.00, 79.99, 89.95, 129.99, 149.00, 249.99, 349.00, 499.00,
)  # fmt: skip
_MONTHS: Final = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_NEWS_DOMAINS: Final = ("dailybusiness.example", "retailwire.example", "localnews.example")
_SPAM_DOMAINS: Final = (
    "claim-airdrop.example", "free-giftcards.example", "get-followers.example",
    "bonus-drop.example",
)  # fmt: skip
_B64_ALNUM: Final = str.maketrans({"+": "k", "/": "Z", "=": "q"})
_B36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"

# ---------------------------------------------------------------------------------------------
# Texts. "to" templates speak to the brand (mentions, mail, forms) and start in lower case so a
# mention can go before them; "about" templates speak about it (Reddit, reviews, keyword hits).

_PRAISE_TO: Final = (
    "huge thanks for getting my {product} to me a day early! {emoji_pos}",
    "shoutout to {staff_name} at your {city} store, went above and beyond today {emoji_pos}",
    "been using the {product} for {duration} now and it's still perfect. Worth every penny.",
    "your support team sorted my refund in under {wait}. That's how it's done!",
    "the new app update is so much faster, checkout took seconds {emoji_pos}",
    "just wanted to say the {product} is the best thing I bought this year.",
    "ordered {when}, arrived next morning, packaging 100% recyclable. Love it.",
    "you replaced my broken {product} with zero hassle. Customer for life.",
    "best customer service I've had in years. {staff_name} on chat was amazing.",
    "the {product} made my {relative} cry happy tears on their birthday {emoji_pos}",
    "finally a company that answers emails the same day. Thank you!",
    "your {city} store team is the friendliest. Always a pleasure.",
    "my {product} survived {years} years of daily use. Just bought a second one.",
    "love the new {product} colours! Ordered two already {emoji_pos}",
    "thank you for the quick fix on order #{order}, really appreciated.",
    "the {food} are ridiculously good. My whole office is hooked now {emoji_pos}",
)
_PRAISE_ABOUT: Final = (
    "Honestly {brand} customer service is underrated. Got my refund in {wait}.",
    "{brand} {product} arrived a day early and works great {emoji_pos}",
    "Can't believe how good the {product} from {brand} is for the price.",
    "Shoutout to the {brand} store in {city}, staff were super helpful today.",
    "Switched from {competitor} to {brand} last year and never looked back.",
    "My {product} from {brand} is {years} years old and still going strong.",
    "If you're on the fence about the {brand} {product}: just get it. They nailed it.",
    "{brand} replaced my broken {product} no questions asked. Impressed.",
    "Not sponsored, I just really love {brand}'s {product}.",
    "Five stars for {brand}: fast shipping to {city}, great packaging, lovely note inside.",
    "The {brand} app finally has order tracking that works. Took them long enough but it's great.",
    "Had a problem with order {order}, {brand} support fixed it within a day. Good experience.",
)
_QUESTION_TO: Final = (
    "do you ship to {country}?",
    "how do I change the delivery address on order #{order}?",
    "what are your opening hours in {city} on {day}?",
    "is the {product} compatible with the {product2}?",
    "how do I cancel my {brand}+ subscription? Can't find it in the app.",
    "can I return a {product} without the receipt?",
    "any student discounts?",
    "when will the {product} be back in stock?",
    "does the {product} come with a warranty? How long?",
    "is there a way to combine two orders ({order} and {order2}) into one delivery?",
    "do you price match? {competitor} has the {product} cheaper.",
    "how long does a refund usually take to show up on my card?",
    "can I pick up order #{order} at the {city} store instead?",
    "are the {food} gluten free? Couldn't find the ingredients online.",
    "what's the difference between the {product} and the {product2}?",
    "where do I find the invoice for order {order}? Need it for expenses.",
)
_QUESTION_ABOUT: Final = (
    "Does anyone know if {brand} ships to {country}?",
    "Anyone tried the {brand} {product}? Worth it?",
    "How long did your {brand} refund take?",
    "Is {brand}+ worth it or should I just pay for delivery each time?",
    "{brand} or {competitor} for a {product}? Can't decide.",
    "Has anyone returned something to {brand} without a receipt?",
    "Is the {brand} store in {city} open on {day}?",
    "Any {brand} discount codes floating around?",
)
_COMPLAINT_TO: Final[dict[str, tuple[str, ...]]] = {
    "delivery": (
        "my order #{order} was supposed to arrive {when} and it's still not here.",
        "package says delivered but there's nothing at my door. Order {order}.",
        "{duration} waiting for my {product}. Tracking hasn't moved since it left {city}.",
        "you sent me the wrong item. I ordered the {product}, got the {product2} instead.",
        "my {product} arrived smashed. The box looked like it was used as a football.",
        "third time the courier 'couldn't find' my address. Order #{order}.",
        "where is order #{order}? Paid for express, it's been {duration}.",
        "half my order is missing. Got the {product} but not the {product2}.",
    ),
    "billing": (
        "you charged me twice for order #{order} ({amount} each). I want my money back.",
        "still waiting on my refund of {amount}, it's been {duration}.",
        "why did my subscription renew at {amount} when I cancelled last month?",
        "I was charged {amount} for an order I never placed.",
        "the promo code worked in the cart but not on the invoice. Overcharged by {amount}.",
        "refund for order {order} was 'approved' {duration} ago. Still nothing on my card.",
    ),
    "bug": (
        "your app keeps crashing when I open {feature}.",
        "is the site down? Getting {error} at checkout.",
        "can't log in since the update, the password reset email never arrives.",
        "the app logged me out and now my saved cards are gone.",
        "{feature} has been broken for {duration}. Please fix it.",
        "tried to pay {n} times, got {error} every time.",
    ),
    "staff": (
        "the staff at your {city} store were incredibly rude to me today.",
        "your support agent hung up on me. Twice.",
        "waited {wait} in line in {city} and the cashier just walked away.",
        "your rep told me the refund was processed. It wasn't. Stop lying to customers.",
        "the delivery driver threw my {product} over the fence.",
        "your chat bot keeps sending me in circles and no human ever answers.",
    ),
}
_COMPLAINT_ABOUT: Final[dict[str, tuple[str, ...]]] = {
    "delivery": (
        "{brand} lost my package AGAIN. Order {order}, {duration} late.",
        "Never ordering from {brand} again. Paid for next-day delivery, still waiting after "
        "{duration}.",
        "{brand} marked my {product} as delivered. It was not delivered.",
        "Tracking for my {brand} order hasn't moved in {duration}. Stuck in {city}.",
    ),
    "billing": (
        "{brand} charged me twice and support won't answer.",
        "Still waiting on a {amount} refund from {brand}, {duration} later.",
        "Cancelled my {brand}+ and they charged me {amount} anyway.",
    ),
    "bug": (
        "Anyone else getting {error} on the {brand} site?",
        "The {brand} app has been broken for {duration}. Can't even check my orders.",
        "Is {brand} down for everyone or just me? {error}",
        "My {brand} {product} broke after {duration}. Warranty claim denied.",
    ),
    "staff": (
        "Rudest staff I've ever met at the {brand} in {city}.",
        "{brand} 'customer service' is a chatbot that hangs up on you.",
        "{brand} delivery driver just threw my parcel over the fence. On camera.",
    ),
}
_CHURN_TO: Final = (
    "I've spent over {big_amount} with you over {years} years and this is how you treat me? "
    "Cancelling everything.",
    "done. Third missed delivery this month. Switching to {competitor}.",
    "as a {tier_word} member I expect better than this. Close my account.",
    "if order #{order} isn't sorted today I'm cancelling my subscription and telling everyone "
    "I know.",
    "{years} years a loyal customer and you can't even answer an email. I'm out.",
    "cancel my account. I'm taking my business to {competitor}.",
    "this is the last straw. Refund me {amount} or I dispute the charge with my bank.",
    "I buy for a team of {n0} and we are reviewing every {brand} contract after this.",
)
_CHURN_ABOUT: Final = (
    "After {years} years I'm done with {brand}. Moving everything to {competitor}.",
    "Cancelled my {brand}+ today. {duration} of broken promises is enough.",
    "Spent {big_amount} at {brand} over the years. Never again.",
    "{brand} just lost a {years}-year customer. Congrats.",
)
_LEGAL_TO: Final = (
    "my son had an allergic reaction after eating your {food}. The label says nothing about "
    "nuts. Who do I contact?",
    "I've forwarded everything to my lawyer. Expect to hear from them.",
    "I just got a notice that my data was part of a data breach at {brand}. Was my card exposed?",
    "my {product} caught fire while charging. This is a safety hazard.",
    "I'm filing a complaint with consumer protection and taking you to small claims court over "
    "order #{order}.",
    "under GDPR I request a copy of all data you hold on me, and then its deletion.",
    "the {product} gave me an electric shock. I want to know if there's a recall.",
    "my lawyer says refusing to refund {amount} is illegal.",
)
_LEGAL_ABOUT: Final = (
    "Was {brand} hacked? Got a data breach notice today.",
    "Allergic reaction after eating {brand} {food}, undeclared nuts. Reporting it.",
    "Talking to a lawyer about {brand}. They kept my {amount}.",
    "PSA: my {brand} {product} overheated and melted. Possible fire risk, stop using yours.",
    "Class action against {brand} anyone? They charged thousands of us twice.",
)
_SARCASM_TO: Final = (
    "wow, thanks for delivering my {product} only {duration} late. Truly world-class service "
    "{emoji_sarc}",
    "love how you charge me twice and then ghost me. 10/10 would recommend {emoji_sarc}",
    "great job, order #{order} has now toured {city} and {city2}. Maybe it'll reach me by "
    "Christmas.",
    "thanks for the {wait} of hold music. Really got to know every note.",
    "so glad I paid for express delivery so my parcel could sit in a warehouse for {duration} "
    "{emoji_sarc}",
    "amazing update. The app now crashes BEFORE I can even log in. Progress!",
)
_SARCASM_ABOUT: Final = (
    "Nothing says customer appreciation like {brand} cancelling my order the day before it was "
    "due {emoji_sarc}",
    "Shoutout to {brand} for teaching me patience. Day {n} without my refund.",
    "{brand} support is great, if you enjoy a bot saying 'I understand your frustration' {n} "
    "times.",
    "Love paying {amount} for a {product} that lasts {duration}. Thanks {brand}!",
)
_CHATTER_TO: Final = (
    "saw one of your trucks in {city} today 👋",
    "what's the song in your new ad? It's stuck in my head.",
    "happy birthday to the {brand} brand I guess? Saw the anniversary post.",
    "any plans to open a store in {city}?",
)
_CHATTER_ABOUT: Final = (
    "{brand} opens a new store in {city} next month.",
    "Just saw a {brand} ad on the subway, the dog in it is adorable.",
    "Anyone else remember when {brand} used to give out free samples?",
    "{brand} Q{q} earnings beat expectations, shares up {pct}% {link}",
    "Reading about the {brand} {product} launch: {link}",
    "Is it me or does every {brand} store smell like cinnamon",
    "Walked past the {brand} in {city} and the queue was around the block.",
    "{brand} is hiring {n0} people in {city} according to {outlet} {link}",
    "My {relative} works at {brand}, says the new HQ is huge.",
    "The {brand} jingle has been stuck in my head all day",
    "{brand} and {competitor} both launching a {product} this week. Competition is good for us.",
    "New {brand} logo. Thoughts?",
    "Interview with the {brand} CEO in {outlet}: {link}",
)
_SPAM_SOCIAL: Final = (
    "🚀 FREE {coin} GIVEAWAY 🚀 First 500 to claim get {coin_amount} {coin}! ➡️ {spam_link}",
    "Win a {gift} {brand} gift card! Just follow + repost and click {spam_link} 🎁",
    "I made $5,000 in one week with this crypto trick 👉 {spam_link}",
    "DM me for cheap followers and likes ✅ 100% real {spam_link}",
    "{brand} customers: claim your compensation here {spam_link} (limited time!!)",
    "🔥🔥 Check out my channel! Follow for follow 🔥🔥 {spam_link}",
    "Airdrop LIVE: connect your wallet to receive {coin_amount} {coin} {spam_link}",
    "Congratulations! You were selected for a free {product}. Claim now: {spam_link}",
)
_SPAM_EMAIL: Final = (
    "Dear Sir/Madam,\n\nWe are a leading SEO agency and noticed your website is not ranking on "
    "page 1 of Google. We can fix this within 30 days, guaranteed.\n\nReply to this email for a "
    "free audit.\n\nBest regards,\nMark\nGrowth Consultant",
    "Your mailbox storage is full. Click {spam_link} within 24 hours to verify your account or "
    "it will be suspended.",
    "Hello,\n\nPlease find the overdue invoice #{n0} attached. Payment of {amount} is required "
    "today to avoid late fees.\n\nView invoice: {spam_link}",
    "Hi,\n\nI'm reaching out because we help brands like {brand} get 10x more reviews. Can I "
    "send you a short video?\n\nCheers,\nJess",
)
_SPAM_FORM: Final = (
    "Hi, I'm a professional web designer. Your website looks outdated, I can redesign it for "
    "$199. Contact me: {spam_link}",
    "Buy cheap followers and reviews!!! {spam_link} {spam_link}",
    "I noticed a few broken links on your site. Want the full list? {spam_link}",
    "Get a business loan approved in 24h. No credit check. {spam_link}",
)

#: (text, sentiment) for messages that are just an emoji, a link or a word.
_MINIMAL: Final[dict[str, tuple[tuple[str, Sentiment], ...]]] = {
    "emoji": (
        ("👍", "positive"), ("🔥🔥🔥", "positive"), ("❤️", "positive"), ("🙏", "positive"),
        ("😡", "negative"), ("💀", "negative"), ("👎", "negative"), ("👀", "neutral"),
        ("🤔", "neutral"), ("😂", "neutral"),
    ),
    "word": (
        ("?", "neutral"), ("...", "neutral"), ("hello??", "negative"), ("this", "neutral"),
        ("lol", "neutral"), ("+1", "neutral"), ("same", "negative"), ("bump", "negative"),
    ),
}  # fmt: skip

_FOLLOWUP_TO: Final[dict[str, tuple[str, ...]]] = {
    "complaint": (
        "still no reply about order #{order}. It's been {duration}.",
        "any update on this? Still nothing.",
        "day {n} of waiting. Hello??",
        "I've now sent {n} messages about this and heard nothing back.",
        "you said 24 hours. That was {duration} ago.",
        "tracking for #{order} still says 'in transit'. Please escalate this.",
        "just tried the chat again, it closed on me after {wait}.",
        "the replacement you promised never shipped either.",
    ),
    "churn": (
        "that's it. I'm cancelling. {competitor} it is.",
        "no answer after {duration}. Close my account.",
        "last chance before I dispute the {amount} with my bank.",
        "I asked for a manager {n} times. Cancelling everything today.",
    ),
    "praise": (
        "update: it's sorted, thanks {staff_name}! {emoji_pos}",
        "finally arrived, and it's lovely. Thanks for sorting it out.",
        "refund came through this morning. Appreciate the help.",
    ),
    # Keys "root>kind" win over "kind" when a thread started as ``root``.
    "question>praise": (
        "thanks for the quick answer!",
        "perfect, that's exactly what I needed. Thanks!",
        "great, thank you {emoji_pos}",
    ),
    "complaint>question": (
        "can you at least tell me when I'll get an answer?",
        "who do I need to talk to to get this sorted?",
        "is there a phone number I can call about order #{order}?",
    ),
    "question>complaint": (
        "it's been {duration} and nobody has answered my question.",
        "still waiting for an answer on this. Not great.",
        "I asked {n} days ago. Is anyone reading these?",
    ),
    "question": (
        "also, is there a way to track order #{order}?",
        "one more question: does the {product} come with a charger?",
        "and can I change the delivery day?",
        "sorry, forgot to ask: do you deliver on weekends?",
    ),
    "legal": (
        "since nobody answers, my lawyer will be in touch.",
        "I've now reported this to consumer protection.",
        "my {relative} is still on antihistamines after the allergic reaction. I want an answer "
        "today.",
    ),
    "sarcasm": (
        "still waiting. But sure, take your time {emoji_sarc}",
        "day {n}. The suspense is killing me {emoji_sarc}",
        "love the silence. Very zen.",
    ),
}
_OP_UPDATE: Final[dict[str, tuple[str, ...]]] = {
    "complaint": (
        "Update: still nothing from {brand}. Going to try calling again tomorrow.",
        "Update: {brand} replied with a copy-paste apology. No refund.",
        "Thanks everyone. Filed a chargeback, will see what happens.",
        "For anyone finding this later: it's been {duration} and it's still not resolved.",
    ),
    "praise": (
        "Update: {brand} sorted it, refund came through today. Credit where it's due.",
        "Thanks all! Ended up getting the {product}, no regrets.",
    ),
    "question": (
        "Thanks, that answers it.",
        "Good to know, appreciate it!",
        "Did anyone get an answer from support on this?",
    ),
    "churn": ("Update: cancelled everything. Moving to {competitor}.",),
    "legal": ("Update: talked to a lawyer, going to small claims.",),
    "sarcasm": ("Update: still waiting. Shocking, I know.",),
}
#: Someone else chiming in on a thread.
_OTHERS: Final[dict[str, tuple[str, ...]]] = {
    "complaint": (
        "Same thing happened to me last month with {brand}.",
        "Had the exact same issue, took {duration} to get sorted.",
        "Chargeback. Don't wait for them.",
        "{brand} has gone downhill so much in the last year.",
        "Call instead of emailing, the phone people can actually issue refunds.",
        "same here, order {order} stuck too.",
    ),
    "praise": (
        "Weird, I've always had good experiences with {brand}.",
        "Their {city} store is great, try going in person.",
        "My {product} from {brand} has been flawless for {years} years.",
    ),
    "question": (
        "Did you try the live chat?",
        "What did they say when you called?",
        "Is this in the US or EU?",
    ),
    "chatter": ("lol", "This is the way.", "Commenting to follow.", "Username checks out."),
    "sarcasm": (
        "{brand} support is a myth, like Bigfoot.",
        "Have you tried turning your expectations off and on again?",
    ),
}

_FOREIGN: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "es": {
        "praise": (
            "¡Gracias por la entrega tan rápida! El {product} llegó perfecto {emoji_pos}",
            "Excelente atención al cliente de {brand}, me lo resolvieron todo en {wait}.",
            "Me encanta mi {product}, lo recomiendo 100%",
            "El equipo de la tienda de {city} es lo más, muy amables.",
        ),
        "question": (
            "¿Hacen envíos a {country}?",
            "¿Cómo cambio la dirección de entrega del pedido {order}?",
            "¿Cuándo vuelve a estar disponible el {product}?",
            "¿Tienen descuento para estudiantes?",
        ),
        "complaint": (
            "Mi pedido {order} todavía no ha llegado y ya pasaron {duration}. ¿Qué pasa?",
            "Me cobraron dos veces {amount}. Quiero mi reembolso YA.",
            "La app de {brand} no funciona desde ayer, sale {error}.",
            "Pésimo servicio, nadie responde los correos {emoji_neg}",
        ),
    },
    "fr": {
        "praise": (
            "Merci pour la livraison super rapide, le {product} est parfait {emoji_pos}",
            "Service client {brand} au top, problème réglé en {wait}.",
            "J'adore mon {product}, je recommande à 100%.",
        ),
        "question": (
            "Vous livrez en {country} ?",
            "Comment modifier l'adresse de livraison de la commande {order} ?",
            "Le magasin de {city} est ouvert le {day} ?",
        ),
        "complaint": (
            "Ma commande {order} n'est toujours pas arrivée après {duration}. C'est inadmissible.",
            "J'ai été débité deux fois ({amount}). Je veux être remboursé.",
            "L'appli {brand} plante à chaque fois que j'ouvre {feature}.",
            "Personne ne répond au service client, c'est une honte {emoji_neg}",
        ),
    },
    "de": {
        "praise": (
            "Danke für die schnelle Lieferung, der {product} ist top {emoji_pos}",
            "Super Kundenservice bei {brand}, alles in {wait} erledigt.",
            "Bin echt begeistert von meinem {product}.",
        ),
        "question": (
            "Liefert ihr auch nach {country}?",
            "Wie kann ich die Lieferadresse für Bestellung {order} ändern?",
            "Hat die Filiale in {city} am {day} geöffnet?",
        ),
        "complaint": (
            "Meine Bestellung {order} ist nach {duration} immer noch nicht da. Unmöglich!",
            "Ihr habt mir {amount} doppelt abgebucht. Ich will mein Geld zurück.",
            "Die {brand} App stürzt ständig ab, sobald ich {feature} öffne.",
            "Niemand antwortet beim Kundenservice. Frechheit {emoji_neg}",
        ),
    },
    "pt": {
        "praise": (
            "Obrigado pela entrega rápida, o {product} chegou perfeito {emoji_pos}",
            "Atendimento da {brand} nota 10, resolveram tudo em {wait}.",
            "Amei meu {product}, recomendo demais!",
        ),
        "question": (
            "Vocês entregam em {country}?",
            "Como mudo o endereço de entrega do pedido {order}?",
            "Quando o {product} volta ao estoque?",
        ),
        "complaint": (
            "Meu pedido {order} ainda não chegou depois de {duration}. Absurdo!",
            "Fui cobrado duas vezes ({amount}). Quero meu reembolso.",
            "O app da {brand} trava toda vez que abro {feature}.",
            "Ninguém responde no atendimento, que vergonha {emoji_neg}",
        ),
    },
    "ja": {
        "praise": (
            "{product}が予定より早く届きました！ありがとうございます{emoji_pos}",  # noqa: RUF001
            "{brand}のサポートの対応がとても丁寧でした。すぐに解決しました。",
            "{product}最高です。毎日使っています。",
        ),
        "question": (
            "{country}への配送はできますか？",  # noqa: RUF001
            "注文番号{order}の配送先を変更したいのですが、どうすればいいですか？",  # noqa: RUF001
            "{product}の再入荷はいつですか？",  # noqa: RUF001
        ),
        "complaint": (
            "注文{order}がまだ届きません。もう{duration}経っています。",
            "二重に請求されています（{amount}）。返金してください。",  # noqa: RUF001
            "{brand}のアプリが{feature}を開くたびに落ちます。",
            "問い合わせても全く返事がありません。",
        ),
    },
}

_BY_VOICE: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "praise": (_PRAISE_TO, _PRAISE_ABOUT),
    "question": (_QUESTION_TO, _QUESTION_ABOUT),
    "churn": (_CHURN_TO, _CHURN_ABOUT),
    "legal": (_LEGAL_TO, _LEGAL_ABOUT),
    "sarcasm": (_SARCASM_TO, _SARCASM_ABOUT),
    "chatter": (_CHATTER_TO, _CHATTER_ABOUT),
}

_TITLES: Final[dict[str, tuple[str, ...]]] = {
    "praise": (
        "Great experience with {brand} support", "{product} review after {duration}: love it",
        "Pleasantly surprised by {brand}", "Five stars", "Exceeded expectations",
        "Fast delivery, great product", "{brand} did right by me",
    ),
    "question": (
        "Question about {brand} returns", "{brand} shipping to {country}?",
        "Is the {product} worth it?", "{brand} vs {competitor}?",
        "How long do {brand} refunds take?",
    ),
    "complaint": (
        "{brand} lost my order and won't refund", "Avoid {brand}",
        "Terrible experience with {brand} support", "Is {brand} down?",
        "{brand} double charged me", "Package marked delivered, never arrived",
        "Warning about {brand} returns", "1 star",
    ),
    "churn": ("Done with {brand} after {years} years", "Cancelling {brand}+", "Never again"),
    "legal": (
        "{brand} data breach?", "Allergic reaction to {brand} {food}",
        "{brand} {product} fire hazard", "Taking {brand} to small claims",
    ),
    "sarcasm": ("Thanks {brand}, really", "Another masterpiece of {brand} customer service"),
    "chatter": ("{brand} news", "Random {brand} thought", "{brand} new store in {city}"),
    "spam": ("FREE GIVEAWAY", "Claim your reward now", "Best deals online"),
    "foreign": ("{brand}", "{product}", "{brand} {product}"),
    "minimal": ("{brand}", "...", "{brand}?"),
}  # fmt: skip
_SUBJECTS: Final[dict[str, tuple[str, ...]]] = {
    "praise": ("Thank you!", "Great service from {staff_name}", "Compliments to your {city} team"),
    "question": (
        "Question about order {order}", "Shipping to {country}", "Warranty question",
        "Invoice request", "Subscription cancellation", "Quick question",
    ),
    "delivery": (
        "Order {order} not delivered", "URGENT: missing package", "Where is my order?",
        "Damaged delivery - order {order}",
    ),
    "billing": ("Double charge on my card", "Refund still not received", "Billing error"),
    "bug": ("App not working", "Cannot log in", "Checkout broken"),
    "staff": ("Complaint about staff at {city} store", "Very poor service"),
    "churn": (
        "Closing my account", "Extremely disappointed", "Final warning before I cancel",
        "FORMAL COMPLAINT",
    ),
    "legal": (
        "Legal notice regarding order {order}", "Allergic reaction - urgent",
        "Data breach notification?", "GDPR data access request", "Product safety issue",
    ),
    "spam": (
        "Partnership opportunity", "Your website ranking", "Invoice #{n0} overdue",
        "RE: Payment confirmation", "Action required: verify your mailbox",
    ),
    "chatter": ("Press inquiry", "Feedback on your new ad", "Collaboration idea"),
    "sarcasm": ("Thanks for nothing", "Great service, as always"),
    "minimal": ("(no subject)", "Fwd: order", ""),
}  # fmt: skip
_FOREIGN_SUBJECTS: Final[dict[str, str]] = {
    "es": "Pedido {order}",
    "fr": "Commande {order}",
    "de": "Bestellung {order}",
    "pt": "Pedido {order}",
    "ja": "注文{order}について",
}
_GREETINGS: Final[dict[str, tuple[str, ...]]] = {
    "en": (
        "Hi {brand} team,", "Hello,", "Dear {brand} Customer Service,", "Hi there,",
        "To whom it may concern,", "Hey,", "Hi,",
    ),
    "es": ("Hola,", "Buenos días,"),
    "fr": ("Bonjour,", "Madame, Monsieur,"),
    "de": ("Hallo,", "Sehr geehrte Damen und Herren,"),
    "pt": ("Olá,", "Bom dia,"),
    "ja": ("お世話になっております。",),
}  # fmt: skip
_SIGNOFFS: Final[dict[str, tuple[str, ...]]] = {
    "en": ("Thanks,", "Thank you,", "Best,", "Regards,", "Kind regards,", "Cheers,", "Sincerely,"),
    "es": ("Saludos,", "Gracias,"),
    "fr": ("Cordialement,", "Merci,"),
    "de": ("Viele Grüße,", "Mit freundlichen Grüßen,"),
    "pt": ("Obrigado,", "Abraços,"),
    "ja": ("よろしくお願いいたします。",),
}
_MOBILE_SIGS: Final = ("Sent from my iPhone", "Sent from my Galaxy", "Get Outlook for Android")
_EXTRA: Final[dict[str, tuple[str, ...]]] = {
    "complaint": (
        "I've already tried the live chat twice and got nowhere.",
        "Please let me know what you can do, I've been patient so far.",
    ),
    "complaint:delivery": (
        "My order number is {order} in case you need it.",
        "Please let me know what you can do, this was meant to be a present.",
        "I have photos of the damaged box if you need them.",
    ),
    "complaint:billing": (
        "My bank statement shows both charges, I can send a screenshot.",
        "The order number is {order}.",
    ),
    "complaint:bug": (
        "I'm on the latest version of the app, and I've tried reinstalling it.",
        "Same thing on my laptop in two different browsers.",
    ),
    "complaint:staff": (
        "I'd like someone to call me back about this.",
        "I've shopped there for years and never been treated like this.",
    ),
    "question": (
        "Thanks in advance!",
        "My order number is {order}.",
        "I couldn't find the answer in your FAQ.",
    ),
    "praise": ("Please pass my thanks on to the team.", "I'll definitely be ordering again."),
    "churn": (
        "I expect a reply from a manager, not a template.",
        "I have been a customer since {year} and have never been treated like this.",
    ),
    "legal": (
        "Please treat this as formal notice.",
        "I have kept the packaging and the receipt as evidence.",
    ),
    "sarcasm": ("Looking forward to your next template reply.",),
}
#: Paragraphs for long e-mails, Reddit posts and reviews; they name the brand, never "you".
_STORY: Final[dict[str, tuple[str, ...]]] = {
    "negative": (
        "I placed order {order} on {date}: one {product} and one {product2}, {amount} in total. "
        "The confirmation email said it would arrive within three working days. It did not. The "
        "tracking page showed 'label created' for almost a week, then jumped to 'out for "
        "delivery' in {city}, which is not even where I live.",
        "On {date2} I contacted {brand} through the chat on the website. The agent, who called "
        "himself {staff_name}, apologised and told me a new parcel would go out the same day. He "
        "gave me a reference number and promised an email confirmation. No email ever arrived, "
        "and the reference number does not exist according to the next person I spoke to.",
        "I then called the hotline. I waited {wait} on hold before the call was dropped. I called "
        "again the next morning and waited another {wait}. When I finally got through, I had to "
        "explain everything from the beginning, because none of my previous contacts had been "
        "logged.",
        "In the meantime my card has been charged {amount}, and a second time for the same amount "
        "two days later. My bank confirms that both payments went to {brand}. I have screenshots "
        "of both transactions and of the order page, which only shows a single order.",
        "I want to be clear that I am not asking for anything unreasonable. I would like either "
        "the items I paid for, delivered to the correct address, or a full refund of both "
        "charges. I would also like someone to explain how this happened, so it doesn't happen "
        "to the next customer.",
        "This was supposed to be a birthday present for my {relative}. The birthday has come and "
        "gone. I had to go out and buy something else at the last minute, at full price, from "
        "{competitor}.",
        "I have been a loyal customer for {years} years. Over that time I have recommended {brand} "
        "to friends, family and colleagues, and I have probably spent well over {big_amount} "
        "there. That is exactly why this experience is so disappointing.",
        "The {brand} website says that complaints are answered within 48 hours. I sent my first "
        "email on {date2}. It has now been {duration}. I have received two automated replies and "
        "nothing else.",
        "When the parcel finally arrived, the box was crushed on one side and the {product} "
        "inside was cracked. I took photos before opening it completely, and I still have all the "
        "packaging if it is needed for a claim with the courier.",
        "I also noticed that my account now shows an address in {city2} that I never entered. I "
        "am worried that someone else has access to my account. I have changed my password, but "
        "I would like {brand} to check whether anything else has been changed or ordered in my "
        "name.",
        "To summarise: order {order}, placed on {date}, charged twice, never delivered in usable "
        "condition, {n} contacts with support, no resolution. I have kept a record of every call "
        "and chat, with dates and names, and I am happy to share it.",
        "If I do not hear back from someone who can actually resolve this within five working "
        "days, I will open a dispute with my card provider and file a complaint with the consumer "
        "protection authority. I would much rather sort this out directly.",
    ),
    "positive": (
        "I ordered the {product} on {date} and it arrived the very next day, carefully packed "
        "and with a handwritten note. It has been in daily use since then and works exactly as "
        "described.",
        "When I had a small problem with the setup, {staff_name} from the {brand} support team "
        "walked me through it on the phone. Patient, friendly and clearly knew the product "
        "inside out.",
        "I have bought from {competitor} before and the difference is night and day. I'll be "
        "recommending {brand} to everyone who asks.",
        "The {city} store deserves a mention too: they let me try out the {product2} for as long "
        "as I wanted and never once pushed me to buy.",
        "Thanks again. It's rare to get service like this these days, and I wanted to make sure "
        "someone at {brand} knows it's appreciated.",
    ),
    # Neutral paragraphs speak to the brand: for mail and forms only.
    "neutral": (
        "For context, I bought the {product} on {date} from the {city} store, and I'm thinking of "
        "getting the {product2} as well.",
        "I've read the FAQ and the terms on the {brand} website but couldn't find a clear answer, "
        "so I thought it'd be quicker to ask directly.",
        "I'm asking because I'll be travelling to {country} next month and would like to have "
        "everything sorted before I go.",
        "My account is registered under {email}, in case anyone needs to look anything up.",
    ),
}
_REDDIT_EDITS: Final = (
    "EDIT: {brand} support reached out via DM, will update.",
    "EDIT 2: still nothing.",
    "EDIT: thanks for the advice everyone, calling my bank tomorrow.",
    "EDIT: no, I don't have another address they could have sent it to.",
)
_DISCLAIMER: Final = (
    "CONFIDENTIALITY NOTICE: This email and any files transmitted with it are confidential and "
    "intended solely for the use of the individual or entity to whom they are addressed. If you "
    "have received this email in error please notify the sender and delete it. Please consider "
    "the environment before printing this email."
)
_SUBREDDITS: Final = (
    "CustomerService", "mildlyinfuriating", "BuyItForLife", "personalfinance", "Frugal",
    "AskReddit", "Scams", "onlineshopping", "smarthome", "Cooking", "techsupport",
)  # fmt: skip
_FORM_TOPICS: Final[dict[str, str]] = {
    "delivery": "Order / delivery",
    "billing": "Billing & refunds",
    "bug": "Website or app problem",
    "staff": "Store feedback",
    "question": "General question",
    "praise": "Compliment",
    "churn": "Account cancellation",
    "legal": "Legal, privacy or safety",
    "sarcasm": "Feedback",
}
_HASHTAGS: Final[dict[str, tuple[str, ...]]] = {
    "positive": ("#shoutout", "#happycustomer", "#{brand}", "#lovethis"),
    "negative": ("#customerservice", "#fail", "#{brand}Fail", "#disappointed", "#help"),
    "neutral": ("#{brand}", "#news", "#retail"),
}
_EMOJI: Final[dict[str, tuple[str, ...]]] = {
    "positive": ("😍", "🙌", "🎉", "❤️", "💯", "🔥", "✨", "👏", "🥳", "😊"),
    "negative": ("😡", "🤬", "😤", "💀", "👎", "🙄", "😭", "🤦", "😠", "💔"),
    "neutral": ("👀", "🤔", "📦", "🛒", "😅", "🙂", "📣", "🤷"),
}
_MISSPELL: Final[dict[str, str]] = {
    "receive": "recieve", "received": "recieved", "definitely": "definately",
    "because": "becuase", "the": "teh", "you": "u", "your": "ur", "please": "pls",
    "really": "rly", "order": "oder", "delivery": "delivry", "refund": "refnd",
    "waiting": "waitng", "tomorrow": "tommorow", "address": "adress", "which": "wich",
    "thanks": "thx", "though": "tho", "about": "abt", "people": "ppl", "still": "stil",
}  # fmt: skip

_KIND_SENTIMENT: Final[dict[str, Sentiment]] = {
    "praise": "positive",
    "question": "neutral",
    "complaint": "negative",
    "churn": "negative",
    "legal": "negative",
    "spam": "neutral",
    "chatter": "neutral",
    "sarcasm": "negative",
}
_CAPS_P: Final[dict[str, float]] = {
    "complaint": 0.05,
    "churn": 0.25,
    "legal": 0.04,
    "praise": 0.02,
    "sarcasm": 0.01,
}
_EMOJI_P: Final[dict[str, float]] = {
    "praise": 0.15,
    "complaint": 0.08,
    "churn": 0.08,
    "sarcasm": 0.10,
    "chatter": 0.05,
    "question": 0.03,
}
_LONG_EMAIL_P: Final[dict[str, float]] = {
    "churn": 0.35,
    "legal": 0.40,
    "complaint": 0.12,
    "question": 0.04,
    "praise": 0.05,
}
#: Which kinds may continue a thread started by a message of a given kind.
_FOLLOWS: Final[dict[str, frozenset[str]]] = {
    "complaint": frozenset(
        {"complaint", "churn", "sarcasm", "minimal", "praise", "legal", "question"}
    ),
    "churn": frozenset({"churn", "complaint", "legal", "minimal", "sarcasm"}),
    "question": frozenset({"question", "complaint", "praise", "minimal"}),
    "praise": frozenset({"praise", "question", "chatter"}),
    "legal": frozenset({"legal", "churn", "complaint"}),
    "sarcasm": frozenset({"complaint", "sarcasm", "churn", "minimal"}),
    "chatter": frozenset({"chatter", "question", "praise"}),
    "foreign": frozenset({"foreign"}),
}
#: The reverse: which thread kinds a message of a given kind may continue.
_CONTINUES: Final[dict[str, frozenset[str]]] = {
    kind: frozenset(root for root, follows in _FOLLOWS.items() if kind in follows)
    for kind in KIND_SHARES
}
_CONTINUE_P: Final[dict[Channel, float]] = {
    "x": 0.25,
    "mastodon": 0.2,
    "reddit": 0.45,
    "email": 0.3,
}
_SAME_AUTHOR_P: Final[dict[Channel, float]] = {
    "x": 0.8,
    "mastodon": 0.8,
    "reddit": 0.4,
    "email": 1.0,
}
_DIRECT_X_P: Final[dict[str, float]] = {
    "chatter": 0.3,
    "praise": 0.8,
    "complaint": 0.85,
    "churn": 0.9,
    "legal": 0.8,
    "sarcasm": 0.7,
    "question": 0.95,
}
_WARM_POOL: Final[dict[Role, int]] = {"regular": 40, "foreign": 10, "bot": 5, "vip": 8}
_NEW_AUTHOR_P: Final[dict[Role, float]] = {
    "regular": 0.4,
    "foreign": 0.5,
    "bot": 0.2,
    "vip": 0.25,
}
_CROSS_CHANNEL: Final[dict[Channel, tuple[Channel, ...]]] = {
    "x": ("mastodon", "reddit"),
    "mastodon": ("x",),
    "reddit": ("x",),
    "email": ("webhook",),
    "webhook": ("email",),
}
_COMPLAINT_TOPICS: Final = (("delivery", "billing", "bug", "staff"), (0.35, 0.60, 0.85, 1.0))
_FOREIGN_TOPICS: Final = (("praise", "question", "complaint"), (0.3, 0.6, 1.0))
_INCIDENT_PRONE: Final = frozenset({"praise", "question", "chatter", "complaint"})
_RATINGS: Final[dict[str, tuple[int, ...]]] = {
    "positive": (4, 5, 5, 5),
    "negative": (1, 1, 1, 2),
    "neutral": (3, 3, 4),
}
_X_EPOCH_MS: Final = 1_288_834_974_657
_MS_PER_DAY: Final = 86_400_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NON_ALNUM: Final = re.compile(r"[^a-z0-9]+")
_MAX_OPEN_THREADS: Final = 60


# ---------------------------------------------------------------------------------------------
# Small text helpers.


@functools.lru_cache(maxsize=4096)
def _fold(text: str) -> str:
    """ASCII letters and digits of ``text`` (for handles and addresses)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_text if ch.isalnum())


def _slug(title: str) -> str:
    """Reddit-style URL slug: the first words of the title, lower case, joined by underscores."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    words = _NON_ALNUM.sub(" ", ascii_title).split()[:8]
    return "_".join(words)[:50]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if not n:
            return out


def _x_char_weight(ch: str) -> int:
    cp = ord(ch)
    light = (
        cp <= 0x10FF or 0x2000 <= cp <= 0x200D or 0x2010 <= cp <= 0x201F or 0x2032 <= cp <= 0x2037
    )
    return 1 if light else 2


def x_weighted_length(text: str) -> int:
    """Length of ``text`` as X counts it: CJK characters and emoji count twice."""
    return sum(_x_char_weight(ch) for ch in text)


def _fit_x(text: str) -> str:
    """Cut ``text`` to what X accepts (280 weighted characters), at a word break if one is near."""
    if len(text) <= 140 or x_weighted_length(text) <= 280:
        return text
    out: list[str] = []
    weight = 0
    for ch in text:
        weight += _x_char_weight(ch)
        if weight > 278:
            break
        out.append(ch)
    cut = "".join(out)
    space = cut.rfind(" ")
    if space > 200:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _fit(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _caps(text: str) -> str:
    return " ".join(w if w.startswith("http") else w.upper() for w in text.split(" "))


def _iso_z(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# The stream.


@dataclass(slots=True, eq=False)
class _Persona:
    """One person (or bot) in the author pool; identities are made when they join a channel."""

    pid: int
    role: Role
    lang: str
    first: str
    last: str
    email: str
    handle: str
    followers: int
    verified: bool
    company: tuple[str, str] | None
    authors: dict[Channel, Author] = field(default_factory=dict)
    instance: str = ""
    channels: list[Channel] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass(slots=True)
class _Pool:
    members: list[_Persona] = field(default_factory=list)
    #: One entry per message written: picking from it favours the most active authors.
    tickets: list[_Persona] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Thread:
    channel: Channel
    kind: Kind
    topic: str | None
    persona: _Persona
    conversation_id: str
    ids: list[str]
    handles: list[str]
    slots: dict[str, str]
    last_ms: int
    remaining: int
    last_text: str = ""
    last_author: str = ""
    subject: str = ""
    ticket: int | None = None
    subreddit: str = ""
    post_path: str = ""


class _Slots(dict[str, str]):
    """Template slot values, drawn on first use so a repeated ``{order}`` stays the same."""

    __slots__ = ("channel", "lang", "persona", "stream")

    def __init__(
        self,
        stream: _Stream,
        lang: str,
        persona: _Persona,
        channel: Channel,
        base: dict[str, str],
    ) -> None:
        super().__init__(base)
        self.stream = stream
        self.lang = lang
        self.persona = persona
        self.channel = channel

    def __missing__(self, key: str) -> str:
        value = self.stream.fill(key, self)
        self[key] = value
        return value


@dataclass(slots=True)
class _Draft:
    """What is known about the message being made before its channel shapes it."""

    channel: Channel
    kind: Kind
    topic: str | None
    persona: _Persona
    lang: str
    sentiment: Sentiment
    created_at: datetime
    slots: _Slots
    thread: _Thread | None
    same_author: bool
    styles: list[str] = field(default_factory=list)


class _Stream:
    """All the state of one replay of the traffic: clock, author pools, open threads, counters."""

    def __init__(self, gen: TrafficGenerator) -> None:
        self.gen = gen
        self.rng = random.Random(gen.seed)
        self.brand = gen.brand
        self.mention = "@" + gen.brand_handle
        self.now_ms = (gen.start - _EPOCH) // timedelta(milliseconds=1)
        self.personas: list[_Persona] = []
        self.pools: dict[tuple[Channel, Role], _Pool] = {}
        self.threads: dict[Channel, list[_Thread]] = {c: [] for c in _CONTINUE_P}
        self.taken: set[str] = set()
        self.incident_until_ms = 0
        self.incident_slots: dict[str, str] = {}
        self.products = tuple(p.replace("{brand}", gen.brand) for p in _PRODUCTS)
        self.tier_words = ("Platinum", "Gold", f"{gen.brand}+ Premium", "VIP", "Elite")
        self.order_prefix = (_fold(gen.brand_handle)[:2] or "AC").upper()
        self.x_seq = 0
        self.mail_seq = 0
        self.reddit_post = int("1j00000", 36) + self.rng.randrange(36**5)
        self.reddit_comment = int("m000000", 36) + self.rng.randrange(36**6)
        self.form_seq = 100 + self.rng.randrange(900)
        self.review_seq = 10_000 + self.rng.randrange(90_000)
        self.ticket_seq = 1 + self.rng.randrange(40)
        self.app_id = 1_000_000_000 + self.rng.randrange(900_000_000)
        self.builders: dict[Channel, Callable[[_Draft], InboundMessage]] = {
            "x": self.build_x,
            "mastodon": self.build_mastodon,
            "reddit": self.build_reddit,
            "email": self.build_email,
            "rss": self.build_rss,
            "webhook": self.build_webhook,
        }
        self.dynamic: dict[str, Callable[[_Slots], str]] = {
            "brand": lambda s: self.brand,
            "product": lambda s: self.pick(self.products),
            "product2": lambda s: self.other(self.products, s["product"]),
            "city2": lambda s: self.other(self.pool_for("city", s.lang), s["city"]),
            "order": lambda s: self.order_number(),
            "order2": lambda s: self.order_number(),
            "amount": lambda s: self.amount(s.lang),
            "n": lambda s: str(self.ri(2, 9)),
            "n0": lambda s: str(self.pick((40, 120, 300, 1200, 2500))),
            "years": lambda s: str(self.ri(2, 15)),
            "year": lambda s: str(gen.start.year - self.ri(2, 15)),
            "date": lambda s: self.past_date(12, 25),
            "date2": lambda s: self.past_date(2, 11),
            "link": lambda s: self.link(s.channel),
            "spam_link": lambda s: self.spam_link(s.channel),
            "email": lambda s: s.persona.email,
            "tier_word": lambda s: self.pick(self.tier_words),
        }

    # -- randomness helpers ------------------------------------------------------------------

    def pick(self, seq: tuple[_T, ...] | list[_T]) -> _T:
        return seq[int(self.rng.random() * len(seq))]

    def pick_cum(self, table: tuple[tuple[_T, ...], tuple[float, ...]]) -> _T:
        values, cum = table
        return values[bisect.bisect_right(cum, self.rng.random())]

    def other(self, seq: tuple[str, ...], not_this: str) -> str:
        for _ in range(8):
            value = self.pick(seq)
            if value != not_this:
                return value
        return value

    def ri(self, low: int, high: int) -> int:
        """A random integer from ``low`` to ``high`` inclusive (cheaper than ``randint``)."""
        return low + int(self.rng.random() * (high - low + 1))

    def token(self, length: int) -> str:
        """``length`` random letters and digits."""
        nbytes = (length * 3 + 3) // 4 + 1
        raw = base64.b64encode(self.rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big"))
        return raw.decode().translate(_B64_ALNUM)[:length]

    def unique(self, namespace: str, make: Callable[[], str]) -> str:
        value = make()
        while f"{namespace}:{value.lower()}" in self.taken:
            value = make()
        self.taken.add(f"{namespace}:{value.lower()}")
        return value

    # -- slot fillers ------------------------------------------------------------------------

    def pool_for(self, key: str, lang: str) -> tuple[str, ...]:
        table = _FILL.get(lang)
        pool = table.get(key) if table else None
        return pool if pool is not None else _FILL["en"][key]

    def fill(self, key: str, slots: _Slots) -> str:
        make = self.dynamic.get(key)
        if make is not None:
            return make(slots)
        return self.pick(self.pool_for(key, slots.lang))

    def order_number(self) -> str:
        digits = str(self.ri(1_000_000, 9_999_999))
        return digits if self.rng.random() < 0.15 else f"{self.order_prefix}-{digits}"

    def amount(self, lang: str) -> str:
        price = self.pick(_PRICES)
        if self.rng.random() < 0.3:
            price = round(price * self.rng.uniform(1.5, 4.0), 2)
        if lang == "en":
            return f"${price:,.2f}"
        if lang == "ja":
            return f"¥{round(price * 150):,}"
        if lang == "pt":
            return f"R$ {price * 5:.2f}".replace(".", ",")
        return f"{price:.2f} €".replace(".", ",")

    def past_date(self, low_days: int, high_days: int) -> str:
        when = _EPOCH + timedelta(
            milliseconds=self.now_ms - self.ri(low_days, high_days) * _MS_PER_DAY
        )
        return f"{_MONTHS[when.month - 1]} {when.day}"

    def link(self, channel: Channel) -> str:
        if channel == "x":
            return "https://t.co/" + self.token(10)
        slug = self.pick(("opens-store", "earnings", "launch", "hiring", "interview", "recall"))
        year = (_EPOCH + timedelta(milliseconds=self.now_ms)).year
        path = f"{year}/{self.gen.brand_handle}-{slug}-{self.ri(100, 999)}"
        return f"https://{self.pick(_NEWS_DOMAINS)}/{path}"

    def spam_link(self, channel: Channel) -> str:
        if channel == "x":
            return "https://t.co/" + self.token(10)
        return f"https://{self.pick(_SPAM_DOMAINS)}/{self.token(7)}"

    # -- people ------------------------------------------------------------------------------

    def new_persona(self, role: Role, channel: Channel) -> _Persona:
        rng = self.rng
        if role == "foreign":
            lang = self.pick_cum(_FOREIGN_LANGS.get(channel, _FOREIGN_LANGS_OTHER))
        else:
            lang = "en"
        firsts, lasts = _NAMES[lang]
        first, last = self.pick(firsts), self.pick(lasts)
        fn, ln = _fold(first).lower(), _fold(last).lower()
        company = None
        if role == "bot":
            word = self.pick(_BOT_WORDS)
            handle = self.unique(
                "handle",
                lambda: f"{_cap(word)}{_cap(self.pick(_BOT_WORDS))}{self.ri(10, 9999)}"[:15],
            )
            email = self.unique(
                "email", lambda: f"{word}{self.ri(100, 99999)}@{self.pick(_BOT_DOMAINS)}"
            )
            first, last = self.pick(_BOT_NAMES), ""
            followers = int(rng.random() * 40) if rng.random() < 0.85 else self.ri(2_000, 20_000)
            verified = rng.random() < 0.05
        else:
            handle = self.unique("handle", lambda: self.handle_for(fn, ln))
            business = rng.random() < (0.6 if role == "vip" else 0.12)
            if business:
                company = self.pick(_COMPANIES)
                domain = company[1]
            else:
                domain = self.pick(_MAIL_DOMAINS[lang])
            email = self.unique("email", lambda: self.address_for(fn, ln, handle, domain, business))
            followers = self.followers(role)
            if followers > 50_000:
                verified = rng.random() < 0.75
            elif followers > 10_000:
                verified = rng.random() < 0.2
            else:
                verified = rng.random() < 0.02
        persona = _Persona(
            pid=len(self.personas),
            role=role,
            lang=lang,
            first=first,
            last=last,
            email=email,
            handle=handle,
            followers=followers,
            verified=verified,
            company=company,
        )
        self.personas.append(persona)
        return persona

    def handle_for(self, f: str, ln: str) -> str:
        style = int(self.rng.random() * 9)
        if style == 0:
            handle = f"{f}{ln}"
        elif style == 1:
            handle = f"{f}_{ln}"
        elif style == 2:
            handle = f"{f}{ln[:1]}{self.ri(70, 105) % 100:02d}"
        elif style == 3:
            handle = f"{f[:1]}{ln}{self.ri(1, 99)}"
        elif style == 4:
            handle = f"the{f}{ln[:1]}"
        elif style == 5:
            handle = f"{f}{self.ri(70, 105) % 100:02d}"
        elif style == 6:
            handle = f"{ln}{f[:1]}"
        elif style == 7:
            handle = f"{f}_{self.pick(_HOBBIES)}"
        else:
            handle = f"{_cap(f)}{_cap(ln)}"
        handle = handle or "user"
        if self.rng.random() < 0.3 or f"handle:{handle.lower()[:15]}" in self.taken:
            handle = f"{handle[:11]}{self.ri(1, 9999)}"
        return handle[:15]

    def address_for(self, f: str, ln: str, handle: str, domain: str, business: bool) -> str:
        if business:
            local = self.pick((f"{f}.{ln}", f"{f[:1]}{ln}", f))
        else:
            local = self.pick(
                (
                    f"{f}.{ln}",
                    f"{f}{ln}{self.ri(1, 99)}",
                    handle.lower(),
                    f"{f}_{ln}",
                    f"{ln}.{f}",
                )
            )
        if f"email:{local}@{domain}" in self.taken:
            local = f"{local}{self.ri(2, 999)}"
        return f"{local}@{domain}"

    def followers(self, role: Role) -> int:
        rng = self.rng
        r = rng.random()
        influencer = 0.03 if role == "vip" else 0.008
        if r < influencer:
            return min(5_000_000, int(50_000 * rng.paretovariate(1.1)))
        if r < influencer + 0.02:
            return int(math.exp(rng.uniform(math.log(5_000), math.log(50_000))))
        return int(rng.lognormvariate(math.log(120), 1.3))

    def join(self, persona: _Persona, channel: Channel) -> Author:
        """Give ``persona`` an identity on ``channel`` (the same one every time after)."""
        author = persona.authors.get(channel)
        if author is not None:
            return author
        rng = self.rng
        shared = bool(persona.channels)
        name = persona.full_name if persona.last else persona.first
        if channel == "x":
            display = self.display_name(persona)
            if rng.random() < 0.35:
                user_id = self.unique("xuid", lambda: str(self.ri(1_000_000, 2_000_000_000)))
            else:
                user_id = self.unique("xuid", self.old_snowflake)
            author = Author(
                user_id=user_id,
                handle=persona.handle,
                name=display,
                followers=persona.followers,
                verified=persona.verified,
            )
        elif channel == "mastodon":
            persona.instance = self.pick(
                _MASTODON_INSTANCES.get(persona.lang, _MASTODON_INSTANCES["en"])
            )
            user_id = self.unique(
                "mid",
                lambda: str(
                    (self.ri(1_480_000_000_000, 1_760_000_000_000) << 16) + rng.getrandbits(16)
                ),
            )
            author = Author(
                user_id=user_id,
                handle=f"{persona.handle.lower()}@{persona.instance}",
                name=self.display_name(persona),
                followers=max(0, persona.followers // 4),
            )
        elif channel == "reddit":
            if shared or persona.role == "bot" or rng.random() < 0.6:
                username = persona.handle
            elif rng.random() < 0.75:
                username = self.unique(
                    "handle",
                    lambda: "-".join(
                        (
                            self.pick(_REDDIT_WORDS[0]),
                            self.pick(_REDDIT_WORDS[1]),
                            str(self.ri(10, 9999)),
                        )
                    ),
                )
            else:
                username = self.unique("handle", lambda: f"throwaway{self.ri(1000, 999_999)}")
            user_id = self.unique("t2", lambda: "t2_" + _b36(rng.getrandbits(40)))
            author = Author(user_id=user_id, handle=username)
        elif channel in ("email", "webhook"):
            author = Author(email=persona.email, name=name if rng.random() < 0.92 else None)
        else:
            style = int(rng.random() * 4)
            if persona.role == "bot":
                review_name = persona.handle
            elif style == 0:
                review_name = persona.first
            elif style == 1:
                review_name = f"{persona.first} {persona.last[:1]}."
            elif style == 2:
                review_name = persona.full_name
            else:
                review_name = persona.handle
            author = Author(name=review_name)
        persona.authors[channel] = author
        persona.channels.append(channel)
        return author

    def display_name(self, persona: _Persona) -> str:
        rng = self.rng
        if persona.role == "bot":
            return persona.first
        if persona.lang == "ja" and rng.random() < 0.7:
            return _JA_KANJI.get(persona.last, persona.last) + _JA_KANJI.get(
                persona.first, persona.first
            )
        style = int(rng.random() * 6)
        if style == 0:
            return persona.first
        if style == 1:
            return f"{persona.first} {persona.last[:1]}."
        if style == 2:
            return f"{persona.full_name} {self.pick(_EMOJI['positive'])}"
        if style == 3 and persona.company is not None:
            return f"{persona.full_name} | {persona.company[0]}"
        return persona.full_name

    def old_snowflake(self) -> str:
        ms = self.ri(1_420_000_000_000, 1_750_000_000_000)
        return str(((ms - _X_EPOCH_MS) << 22) | self.rng.getrandbits(22))

    def author_for(self, channel: Channel, role: Role) -> _Persona:
        """Pick who writes next on ``channel``: often someone who wrote before (Zipf-like)."""
        rng = self.rng
        pool = self.pools.get((channel, role))
        if pool is None:
            # Start with a crowd, so the first few people do not write everything.
            pool = self.pools[(channel, role)] = _Pool()
            warm = 3 if channel == "rss" else _WARM_POOL[role]
            pool.members.extend(self.new_persona(role, channel) for _ in range(warm))
        p_new = _NEW_AUTHOR_P[role]
        if channel == "rss":
            p_new = 0.85
        elif channel == "webhook":
            p_new = max(p_new, 0.55)
        if not pool.members or rng.random() < p_new:
            persona = self.adopt(channel, role) or self.new_persona(role, channel)
            pool.members.append(persona)
        elif rng.random() < 0.6 and pool.tickets:
            persona = self.pick(pool.tickets)
        else:
            persona = self.pick(pool.members)
        pool.tickets.append(persona)
        return persona

    def adopt(self, channel: Channel, role: Role) -> _Persona | None:
        """Now and then someone known on a sibling channel turns up here (same handle or email)."""
        if role == "bot" or self.rng.random() >= 0.06:
            return None
        for sibling in _CROSS_CHANNEL.get(channel, ()):
            pool = self.pools.get((sibling, role))
            if pool is None or not pool.members:
                continue
            persona = self.pick(pool.members)
            if channel not in persona.authors:
                return persona
        return None

    def role_for(self, kind: Kind) -> Role:
        if kind == "spam":
            return "bot"
        if kind == "foreign":
            return "foreign"
        r = self.rng.random()
        if kind == "churn":
            return "vip" if r < 0.6 else "regular"
        if kind in ("complaint", "question", "praise") and r < 0.04:
            return "vip"
        return "regular"

    # -- time ----------------------------------------------------------------------------------

    def tick(self) -> bool:
        """Move the clock to the next message; returns True while an outage is going on."""
        rng = self.rng
        hour = (self.now_ms // 1000 % 86_400) / 3600
        # Busiest mid-afternoon UTC (Europe evening, US morning), quietest before dawn.
        rate = 1.0 + 0.7 * math.cos(2 * math.pi * (hour - 15) / 24)
        incident = self.now_ms < self.incident_until_ms
        if incident:
            rate *= 2.5
        gap_s = rng.expovariate(1.0 / self.gen.mean_gap_s) / rate
        self.now_ms += max(1, round(gap_s * 1000))
        if not incident and rng.random() < gap_s / (36 * 3600):
            self.incident_until_ms = self.now_ms + self.ri(20, 60) * 60_000
            self.incident_slots = {
                "feature": self.pick(_FILL["en"]["feature"]),
                "error": self.pick(_FILL["en"]["error"]),
            }
        return self.now_ms < self.incident_until_ms

    # -- threads -------------------------------------------------------------------------------

    def pick_thread(self, channel: Channel, kind: Kind) -> tuple[_Thread | None, bool]:
        open_threads = self.threads.get(channel)
        if not open_threads or self.rng.random() >= _CONTINUE_P[channel]:
            return None, False
        stale = self.now_ms - 4 * _MS_PER_DAY
        while open_threads and open_threads[0].last_ms < stale:
            open_threads.pop(0)
        roots = _CONTINUES[kind]
        candidates = [t for t in open_threads[-30:] if t.kind in roots]
        if not candidates:
            return None, False
        thread = self.pick(candidates)
        same = thread.kind == "foreign" or self.rng.random() < _SAME_AUTHOR_P[channel]
        return thread, same

    def thread_length(self, kind: Kind) -> int:
        r = self.rng.random()
        if kind in _NEGATIVE_KINDS:
            steps = ((0.45, 0, 0), (0.72, 1, 2), (0.87, 3, 5), (1.0, 6, 14))
        else:
            steps = ((0.65, 0, 0), (0.90, 1, 2), (0.98, 3, 5), (1.0, 6, 10))
        for bound, low, high in steps:
            if r < bound:
                return self.ri(low, high)
        return 0

    def record(self, d: _Draft, msg: InboundMessage, handle: str, **extra: str) -> None:
        """Remember the message as part of its thread, or as the root of a new one."""
        thread = d.thread
        if thread is not None:
            thread.ids.append(msg.external_id)
            thread.handles.append(handle)
            thread.last_ms = self.now_ms
            thread.last_text = msg.text
            thread.last_author = msg.author.name or msg.author.email or handle
            thread.remaining -= 1
            if thread.remaining <= 0:
                self.threads[d.channel].remove(thread)
            return
        if d.channel not in _CONTINUE_P or d.kind in ("spam", "minimal"):
            return
        remaining = self.thread_length(d.kind)
        if remaining <= 0:
            return
        thread = _Thread(
            channel=d.channel,
            kind=d.kind,
            topic=d.topic,
            persona=d.persona,
            conversation_id=msg.conversation_id or msg.external_id,
            ids=[msg.external_id],
            handles=[handle],
            slots={k: v for k, v in d.slots.items() if k not in ("n", "emoji_pos", "emoji_neg")},
            last_ms=self.now_ms,
            remaining=remaining,
            last_text=msg.text,
            last_author=msg.author.name or msg.author.email or handle,
            subject=extra.get("subject", ""),
            subreddit=extra.get("subreddit", ""),
            post_path=extra.get("post_path", ""),
        )
        if d.channel == "email" and self.rng.random() < 0.5:
            thread.ticket = self.ticket_seq
            self.ticket_seq += 1
        open_threads = self.threads[d.channel]
        open_threads.append(thread)
        if len(open_threads) > _MAX_OPEN_THREADS:
            open_threads.pop(0)

    # -- the next message ------------------------------------------------------------------

    def next(self) -> Mention:
        rng = self.rng
        incident = self.tick()
        channel = _CHANNEL_LIST[bisect.bisect_right(_CHANNEL_CUM, rng.random())]
        kind: Kind = self.pick_cum(_KIND_TABLES[channel])
        topic: str | None = None
        if incident and kind in _INCIDENT_PRONE and rng.random() < 0.35:
            kind, topic = "complaint", "bug"
        elif kind == "complaint":
            topic = "bug" if incident else self.pick_cum(_COMPLAINT_TOPICS)
        elif kind == "foreign":
            topic = self.pick_cum(_FOREIGN_TOPICS)

        thread, same_author = self.pick_thread(channel, kind)
        if thread is not None and thread.kind == kind and thread.topic is not None:
            topic = thread.topic  # a follow-up is about what the thread is about
        if thread is None:
            persona = self.author_for(channel, self.role_for(kind))
        elif same_author:
            persona = thread.persona
            self.pools[(channel, persona.role)].tickets.append(persona)
        else:
            persona = self.author_for(channel, "regular")
        self.join(persona, channel)

        if kind == "foreign":
            sentiment = _KIND_SENTIMENT[topic or "question"]
        else:
            sentiment = _KIND_SENTIMENT.get(kind, "neutral")
        base = dict(thread.slots) if thread is not None else {}
        if incident and topic == "bug":
            base.update(self.incident_slots)
        base["brand"] = self.brand
        d = _Draft(
            channel=channel,
            kind=kind,
            topic=topic,
            persona=persona,
            lang=persona.lang,
            sentiment=sentiment,
            created_at=_EPOCH + timedelta(milliseconds=self.now_ms),
            slots=_Slots(self, persona.lang, persona, channel, base),
            thread=thread,
            same_author=same_author,
        )
        msg = self.builders[channel](d)
        return Mention(
            message=msg,
            kind=kind,
            topic=topic,
            sentiment=d.sentiment,
            lang=d.lang,
            author_id=persona.pid,
            vip=persona.role == "vip",
            styles=tuple(d.styles),
            incident=incident,
        )

    # -- composing text ----------------------------------------------------------------------

    def core(self, d: _Draft, voice: Literal["to", "about"]) -> str:
        """The message's own words, before the channel adds mentions, greetings or quotes."""
        kind = d.kind
        templates: tuple[str, ...] | None = None
        if kind == "foreign":
            templates = _FOREIGN[d.lang][d.topic or "question"]
        elif kind == "spam":
            if d.channel == "email":
                templates = _SPAM_EMAIL
            elif d.channel == "webhook":
                templates = _SPAM_FORM
            else:
                templates = _SPAM_SOCIAL
        elif d.thread is not None:
            if not d.same_author:
                templates = _OTHERS.get(kind)
            elif d.channel == "reddit":
                templates = _OP_UPDATE.get(kind)
            else:
                templates = _FOLLOWUP_TO.get(f"{d.thread.kind}>{kind}") or _FOLLOWUP_TO.get(kind)
        if templates is None:
            templates = self.templates(kind, d.topic, voice)
        text = self.pick(templates).format_map(d.slots)
        if kind != "spam":
            text = self.style(d, text)
        return text

    def templates(
        self, kind: Kind, topic: str | None, voice: Literal["to", "about"]
    ) -> tuple[str, ...]:
        to = voice == "to"
        if kind == "complaint":
            return (_COMPLAINT_TO if to else _COMPLAINT_ABOUT)[topic or "delivery"]
        pair = _BY_VOICE.get(kind, (_CHATTER_TO, _CHATTER_ABOUT))
        return pair[0] if to else pair[1]

    def style(self, d: _Draft, text: str) -> str:
        rnd = self.rng.random
        if d.lang == "en" and rnd() < 0.10:
            text = self.typos(text)
            d.styles.append("typos")
        if rnd() < _CAPS_P.get(d.kind, 0.005):
            text = _caps(text)
            d.styles.append("caps")
        if d.channel in ("x", "mastodon") and rnd() < _EMOJI_P.get(d.kind, 0.02):
            text = self.emojify(text, d.sentiment)
            d.styles.append("emoji")
        return text

    def typos(self, text: str) -> str:
        rnd = self.rng.random
        words = text.split(" ")
        for i, word in enumerate(words):
            if rnd() >= 0.12 or not word.isalpha():
                continue
            lower = word.lower()
            if lower in _MISSPELL and rnd() < 0.7:
                words[i] = _MISSPELL[lower]
            elif len(word) > 3:
                j = 1 + int(rnd() * (len(word) - 2))
                op = int(rnd() * 3)
                if op == 0:
                    words[i] = word[: j - 1] + word[j] + word[j - 1] + word[j + 1 :]
                elif op == 1:
                    words[i] = word[:j] + word[j + 1 :]
                else:
                    words[i] = word[:j] + word[j] + word[j:]
        text = " ".join(words)
        return text.lower() if rnd() < 0.3 else text

    def emojify(self, text: str, sentiment: Sentiment) -> str:
        emoji = _EMOJI[sentiment]
        words = text.split(" ")
        for _ in range(self.ri(1, 3)):
            words.insert(int(self.rng.random() * (len(words) + 1)), self.pick(emoji))
        tail = "".join(self.pick(emoji) for _ in range(self.ri(2, 6)))
        return " ".join(words) + " " + tail

    def minimal(self, d: _Draft, allow_link: bool = True) -> tuple[str, str]:
        """An emoji, a lone word or a bare link; returns the text and what it is."""
        r = self.rng.random()
        if allow_link and r < 0.2:
            d.sentiment = "neutral"
            return self.link(d.channel), "link"
        group = "emoji" if r < 0.65 else "word"
        text, sentiment = self.pick(_MINIMAL[group])
        d.sentiment = sentiment
        return text, group

    def story(self, d: _Draft, low: int, high: int) -> list[str]:
        """Some paragraphs of back story, in the mood of the message."""
        mood = d.sentiment if d.kind not in ("question", "chatter") else "neutral"
        pool = _STORY["negative" if mood == "negative" else mood]
        count = min(len(pool), self.ri(low, high))
        picked = sorted(self.rng.sample(range(len(pool)), count))  # keep the story in order
        return [pool[i].format_map(d.slots) for i in picked]

    # -- channels ----------------------------------------------------------------------------

    def social_text(self, d: _Draft, author: Author, tag: str) -> tuple[str, bool, str | None]:
        """Text of an X or Mastodon post, whether it addresses the brand, and what it is if bare."""
        thread = d.thread
        if d.kind == "minimal":
            text, what = self.minimal(d)
            if thread is None and what != "link" and self.rng.random() < 0.5:
                return f"{self.mention} {text}", True, None
            if thread is not None and thread.handles[-1] != author.handle:
                return f"@{thread.handles[-1].split('@')[0]} {text}", True, None
            return text, thread is not None, what
        if thread is not None:
            prefix = ""
            if thread.handles[-1] != author.handle:
                prefix = f"@{thread.handles[-1].split('@')[0]} "
            core = self.core(d, "to")
            if not d.same_author and d.kind != "foreign":
                core = _cap(core)
            return f"{prefix}{self.mention} {core}", True, None
        direct = d.kind in ("spam", "foreign") or self.rng.random() < _DIRECT_X_P.get(d.kind, 0.8)
        if not direct:
            text = _cap(self.core(d, "about"))
            if tag == "mastodon" and self.rng.random() < 0.6:
                text += f" #{_fold(self.brand)}"
            return self.hashtag(d, text), False, None
        core = self.core(d, "to")
        r = self.rng.random()
        if d.kind in ("spam", "foreign") or r < 0.7:
            text = f"{self.mention} {core}"
        elif r < 0.9:
            text = f"{_cap(core)} {self.mention}"
        else:
            text = f"Hey {self.mention}, {core}"
        return self.hashtag(d, text), True, None

    def hashtag(self, d: _Draft, text: str) -> str:
        if d.kind in ("spam", "foreign") or self.rng.random() >= 0.12:
            return text
        return f"{text} {self.pick(_HASHTAGS[d.sentiment]).replace('{brand}', _fold(self.brand))}"

    def build_x(self, d: _Draft) -> InboundMessage:
        rng = self.rng
        author = d.persona.authors["x"]
        self.x_seq = (self.x_seq + 1) & 0xFFF
        tweet_id = str(
            ((self.now_ms - _X_EPOCH_MS) << 22) | (rng.getrandbits(10) << 12) | self.x_seq
        )
        text, direct, bare = self.social_text(d, author, "x")
        text = _fit_x(text)
        if bare == "link":
            lang = "zxx"
        elif bare is not None:
            lang = "und"
        elif d.lang == "en" and len(text) < 40 and rng.random() < 0.1:
            lang = "und"  # X's detector gives up on short texts now and then
        else:
            lang = d.lang
        thread = d.thread
        in_reply_to = thread.ids[-1] if thread is not None else None
        conversation_id = thread.conversation_id if thread is not None else tweet_id
        raw: dict[str, object] = {
            "id": tweet_id,
            "text": text,
            "author_id": author.user_id,
            "created_at": _iso_z(d.created_at),
            "conversation_id": conversation_id,
            "lang": lang,
            "edit_history_tweet_ids": [tweet_id],
            "public_metrics": {
                "retweet_count": int(rng.paretovariate(2.0)) - 1,
                "reply_count": int(rng.paretovariate(2.0)) - 1,
                "like_count": int(rng.paretovariate(1.5)) - 1,
                "quote_count": 0,
            },
        }
        if in_reply_to is not None:
            raw["referenced_tweets"] = [{"type": "replied_to", "id": in_reply_to}]
        msg = InboundMessage(
            channel="x",
            external_id=tweet_id,
            text=text,
            author=author,
            created_at=d.created_at,
            lang=lang,
            in_reply_to=in_reply_to,
            conversation_id=conversation_id,
            url=f"https://x.com/{author.handle}/status/{tweet_id}",
            direct=direct,
            raw=raw,
        )
        self.record(d, msg, author.handle or "")
        return msg

    def build_mastodon(self, d: _Draft) -> InboundMessage:
        rng = self.rng
        author = d.persona.authors["mastodon"]
        status_id = str((self.now_ms << 16) | rng.getrandbits(16))
        text, direct, bare = self.social_text(d, author, "mastodon")
        text = _fit(text, 500)
        r = rng.random()
        lang: str | None
        if bare is not None or r < 0.07:
            lang = None
        elif d.lang != "en" and r < 0.12:
            lang = "en"  # the poster's app default, not what they wrote
        else:
            lang = d.lang
        thread = d.thread
        in_reply_to = thread.ids[-1] if thread is not None else None
        conversation_id = thread.conversation_id if thread is not None else status_id
        local, _, instance = (author.handle or "").partition("@")
        url = f"https://{instance}/@{local}/{status_id}"
        content = "".join(
            "<p>" + html.escape(p, quote=False).replace("\n", "<br />") + "</p>"
            for p in text.split("\n\n")
        )
        msg = InboundMessage(
            channel="mastodon",
            external_id=status_id,
            text=text,
            author=author,
            created_at=d.created_at,
            lang=lang,
            in_reply_to=in_reply_to,
            conversation_id=conversation_id,
            url=url,
            direct=direct,
            raw={
                "id": status_id,
                "created_at": _iso_z(d.created_at),
                "in_reply_to_id": in_reply_to,
                "language": lang,
                "visibility": "public" if rng.random() < 0.9 else "unlisted",
                "url": url,
                "content": content,
                "account": {
                    "id": author.user_id,
                    "acct": author.handle,
                    "display_name": author.name,
                    "followers_count": author.followers,
                },
            },
        )
        self.record(d, msg, author.handle or "")
        return msg

    def build_reddit(self, d: _Draft) -> InboundMessage:
        rng = self.rng
        author = d.persona.authors["reddit"]
        thread = d.thread
        title: str | None = None
        parent: str | None = None
        if thread is not None:
            subreddit, post_path = thread.subreddit, thread.post_path
            conversation_id = thread.conversation_id
            parent = thread.ids[-1] if rng.random() < 0.5 else self.pick(thread.ids)
            is_post = False
        else:
            own = _fold(self.gen.brand) or "shopping"
            subreddit = own if rng.random() < 0.3 else self.pick(_SUBREDDITS)
            is_post = d.kind != "minimal" and rng.random() < 0.45
            self.reddit_post += self.ri(1, 3000)
            post36 = _b36(self.reddit_post)
            conversation_id = f"t3_{post36}"
            title_src = _TITLES.get(d.kind, _TITLES["chatter"])
            slug_title = self.pick(title_src).format_map(d.slots)
            if is_post:
                title = slug_title
            slug = _slug(slug_title)
            post_path = f"/r/{subreddit}/comments/{post36}/{slug or 'post'}/"
        if is_post:
            external_id = conversation_id
            permalink = post_path
        else:
            self.reddit_comment += self.ri(1, 5000)
            c36 = _b36(self.reddit_comment)
            external_id = f"t1_{c36}"
            permalink = f"{post_path}{c36}/"
        if d.kind == "minimal":
            text, _ = self.minimal(d)
        else:
            text = self.core(d, "about")
            if thread is None and d.kind not in ("spam", "foreign"):
                text = _cap(text)
                long_p = 0.12 if is_post else 0.03
                if d.kind in ("complaint", "churn", "legal", "praise") and rng.random() < long_p:
                    paragraphs = [text, *self.story(d, 3, 8)]
                    if d.sentiment == "negative" and rng.random() < 0.5:
                        paragraphs.append(self.pick(_REDDIT_EDITS).format_map(d.slots))
                    text = "\n\n".join(paragraphs)
                    d.styles.append("long")
                elif is_post and d.sentiment != "neutral" and rng.random() < 0.5:
                    text = "\n\n".join([text, *self.story(d, 1, 1)])
        direct = False
        if d.kind in ("complaint", "churn") and rng.random() < 0.08:
            text += f"\n\nu/{self.gen.brand_handle} care to explain?"
            direct = True
        data: dict[str, object] = {
            "id": external_id[3:],
            "name": external_id,
            "author": author.handle,
            "author_fullname": author.user_id,
            "subreddit": subreddit,
            "created_utc": self.now_ms / 1000,
            "permalink": permalink,
            "score": int(rng.paretovariate(1.3)),
        }
        if is_post:
            data.update(title=title, selftext=text, num_comments=0)
        else:
            data.update(body=text, link_id=conversation_id, parent_id=parent or conversation_id)
        msg = InboundMessage(
            channel="reddit",
            external_id=external_id,
            text=text,
            author=author,
            created_at=d.created_at,
            in_reply_to=parent,
            conversation_id=conversation_id,
            subject=title,
            url=f"https://www.reddit.com{permalink}",
            direct=direct,
            raw={"kind": external_id[:2], "data": data},
        )
        self.record(d, msg, author.handle or "", subreddit=subreddit, post_path=post_path)
        return msg

    def message_id(self, persona: _Persona) -> str:
        self.mail_seq += 1
        domain = persona.email.rpartition("@")[2]
        seq = _b36(self.mail_seq)
        if domain.startswith("gmail"):
            return f"<CA{self.token(40)}{seq}@mail.{domain}>"
        if domain.startswith(("outlook", "hotmail")):
            local = f"DM6PR11MB{self.ri(1000, 9999)}{self.rng.getrandbits(88):022X}"
            return f"<{local}{seq}@{domain}>"
        if domain.startswith("icloud"):
            u = f"{self.rng.getrandbits(128):032X}"
            return f"<{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}{seq}@{domain}>"
        iso = (_EPOCH + timedelta(milliseconds=self.now_ms)).isoformat(timespec="seconds")
        stamp = iso[:19].replace("-", "").replace(":", "").replace("T", "")
        return f"<{stamp}.{self.rng.getrandbits(48):012x}.{seq}@{domain}>"

    def build_email(self, d: _Draft) -> InboundMessage:
        rng = self.rng
        persona = d.persona
        author = persona.authors["email"]
        lang = d.lang
        message_id = self.message_id(persona)
        thread = d.thread
        references: list[str] = []
        in_reply_to: str | None = None
        if thread is not None:
            in_reply_to = thread.ids[-1]
            references = list(thread.ids)
            tag = f"[#{thread.ticket}] " if thread.ticket is not None else ""
            subject = f"Re: {tag}{thread.subject}"
        else:
            if d.kind == "foreign":
                subject = _FOREIGN_SUBJECTS[lang].format_map(d.slots)
            else:
                key = d.topic if d.kind == "complaint" and d.topic else d.kind
                subject = self.pick(_SUBJECTS.get(key, _SUBJECTS["question"])).format_map(d.slots)
            if d.kind in ("complaint", "churn", "question") and rng.random() < 0.05:
                subject = f"[#{self.ri(1, self.ticket_seq)}] {subject}"
        if d.kind == "minimal":
            text, what = self.minimal(d, allow_link=True)
            body = text if what != "emoji" or rng.random() < 0.5 else ""
            body = f"{body}\n\n{self.pick(_MOBILE_SIGS)}".strip()
        elif d.kind == "spam":
            body = self.core(d, "to")
        else:
            body = self.email_body(d)
        if thread is not None and thread.last_text and rng.random() < 0.8:
            when = format_datetime(_EPOCH + timedelta(milliseconds=thread.last_ms))
            quoted = "\n".join(
                "> " + line if line else ">" for line in thread.last_text.splitlines()[:12]
            )
            body = f"{body}\n\nOn {when}, {thread.last_author} wrote:\n{quoted}"
        msg = InboundMessage(
            channel="email",
            external_id=message_id,
            text=body,
            author=author,
            created_at=d.created_at,
            in_reply_to=in_reply_to,
            references=references,
            subject=subject,
            direct=True,
            raw={
                "message_id": message_id,
                "from": f"{author.name} <{author.email}>" if author.name else author.email,
                "to": f"support@{self.gen.brand_handle}.example",
                "subject": subject,
                "date": format_datetime(d.created_at),
                "in_reply_to": in_reply_to,
                "references": " ".join(references) or None,
                "content_type": "text/plain; charset=utf-8",
            },
        )
        self.record(d, msg, author.email or "", subject=subject)
        return msg

    def email_body(self, d: _Draft) -> str:
        rng = self.rng
        persona = d.persona
        lang = d.lang
        paragraphs: list[str] = []
        if rng.random() < 0.85:
            paragraphs.append(self.pick(_GREETINGS[lang]).format_map(d.slots))
        paragraphs.append(_cap(self.core(d, "to")))
        if lang == "en":
            if d.thread is None and rng.random() < _LONG_EMAIL_P.get(d.kind, 0.0):
                paragraphs.extend(self.story(d, 5, 10))
                d.styles.append("long")
            elif rng.random() < 0.3:
                paragraphs.extend(self.story(d, 1, 2))
            extra = _EXTRA.get(f"{d.kind}:{d.topic}") or _EXTRA.get(d.kind)
            if extra and rng.random() < 0.6:
                paragraphs.append(self.pick(extra).format_map(d.slots))
        signoff = self.pick(_SIGNOFFS[lang])
        r = rng.random()
        if persona.company is not None:
            sig = (
                f"{signoff}\n{persona.first}\n\n--\n{persona.full_name}\n"
                f"{self.pick(_JOB_TITLES)}, {persona.company[0]}\n+1 555-01{self.ri(0, 99):02d}"
            )
        elif r < 0.2:
            sig = f"{signoff}\n{persona.first}\n\n{self.pick(_MOBILE_SIGS)}"
        elif r < 0.6:
            sig = f"{signoff}\n{persona.full_name}"
        else:
            sig = f"{signoff}\n{persona.first}"
        paragraphs.append(sig)
        if "long" in d.styles and persona.company is not None:
            paragraphs.append(_DISCLAIMER)
        return "\n\n".join(paragraphs)

    def build_rss(self, d: _Draft) -> InboundMessage:
        rng = self.rng
        author = d.persona.authors["rss"]
        self.review_seq += self.ri(1, 40)
        r = rng.random()
        brand_site = self.gen.brand_handle
        if r < 0.5:
            feed = "trustpilot"
            # A MongoDB ObjectId, as Trustpilot uses: seconds, random bytes, counter.
            stamp = self.now_ms // 1000
            object_id = f"{stamp:08x}{rng.getrandbits(40):010x}{self.review_seq & 0xFFFFFF:06x}"
            url = f"https://www.trustpilot.com/reviews/{object_id}"
        elif r < 0.8:
            feed = "appstore"
            url = (
                f"https://apps.apple.com/us/app/{brand_site}/id{self.app_id}"
                f"?review={self.review_seq}"
            )
        else:
            feed = "sitejabber"
            url = f"https://www.sitejabber.com/reviews/{brand_site}.example#{self.review_seq}"
        if d.kind == "minimal":
            text, _ = self.minimal(d, allow_link=False)
            title = self.pick(_TITLES["minimal"]).format_map(d.slots)
        else:
            title = self.pick(_TITLES.get(d.kind, _TITLES["chatter"])).format_map(d.slots)
            text = _cap(self.core(d, "about"))
            # Neutral back story speaks to the brand; it belongs in mail, not in a public review.
            if d.lang == "en" and d.sentiment != "neutral" and rng.random() < 0.35:
                long = rng.random() < 0.15
                paragraphs = self.story(d, 3, 6) if long else self.story(d, 1, 2)
                text = "\n\n".join([text, *paragraphs])
                if long:
                    d.styles.append("long")
        if d.kind == "spam":
            rating = 5
        elif d.kind == "sarcasm":
            rating = self.pick((1, 5))
        else:
            rating = self.pick(_RATINGS[d.sentiment])
        msg = InboundMessage(
            channel="rss",
            external_id=url,
            text=text,
            author=author,
            created_at=d.created_at,
            subject=title,
            url=url,
            direct=False,
            raw={
                "feed": feed,
                "id": url,
                "link": url,
                "title": title,
                "author": author.name,
                "published": _iso_z(d.created_at),
                "summary": _fit(text, 200),
                "rating": rating,
            },
        )
        return msg

    def build_webhook(self, d: _Draft) -> InboundMessage:
        rng = self.rng
        author = d.persona.authors["webhook"]
        self.form_seq += 1
        submission = f"form-{self.form_seq:06d}"
        if d.kind == "minimal":
            text = self.pick((".", "test", "asdf", "?", "hello", ""))
            d.sentiment = "neutral"
        else:
            text = _cap(self.core(d, "to"))
            if d.lang == "en" and d.kind != "spam":
                if rng.random() < 0.03:
                    text = "\n\n".join([text, *self.story(d, 4, 8)])
                    d.styles.append("long")
                else:
                    extra = _EXTRA.get(f"{d.kind}:{d.topic}") or _EXTRA.get(d.kind)
                    if extra and rng.random() < 0.4:
                        text = f"{text} {self.pick(extra).format_map(d.slots)}"
        key = d.topic if d.kind == "complaint" and d.topic else d.kind
        topic = _FORM_TOPICS.get(key, "Other")
        msg = InboundMessage(
            channel="webhook",
            external_id=submission,
            text=text,
            author=author,
            created_at=d.created_at,
            subject=topic,
            direct=True,
            raw={
                "submission_id": submission,
                "form": "contact-us",
                "submitted_at": _iso_z(d.created_at),
                "fields": {
                    "name": author.name or "",
                    "email": author.email,
                    "topic": topic,
                    "order_number": d.slots.get("order", ""),
                    "message": text,
                },
            },
        )
        return msg


# ---------------------------------------------------------------------------------------------
# The public face.


class TrafficGenerator:
    """Deterministic stream of realistic brand mentions across all channels."""

    def __init__(
        self,
        seed: int,
        brand: str = "Acme",
        brand_handle: str = "acme",
        start: datetime = DEFAULT_START,
        mean_gap_s: float = 30.0,
    ) -> None:
        if mean_gap_s <= 0:
            raise ValueError("mean_gap_s must be positive")
        if not brand.strip() or not brand_handle.strip():
            raise ValueError("brand and brand_handle must not be empty")
        self.seed = seed
        self.brand = brand.strip()
        self.brand_handle = brand_handle.strip().lstrip("@")
        self.start = start if start.tzinfo is not None else start.replace(tzinfo=UTC)
        self.mean_gap_s = mean_gap_s

    def __repr__(self) -> str:
        return (
            f"TrafficGenerator(seed={self.seed!r}, brand={self.brand!r}, "
            f"brand_handle={self.brand_handle!r}, start={self.start.isoformat()!r}, "
            f"mean_gap_s={self.mean_gap_s!r})"
        )

    def mentions(self, count: int) -> Iterator[Mention]:
        """The first ``count`` messages with what each was meant to be (kind, sentiment, author)."""
        stream = _Stream(self)
        for _ in range(count):
            yield stream.next()

    def messages(self, count: int) -> Iterator[InboundMessage]:
        """The first ``count`` messages, oldest first."""
        for mention in self.mentions(count):
            yield mention.message

    def customers(self, count: int, *, among: int = 1000) -> list[dict[str, str]]:
        """CSV rows (``CUSTOMER_COLUMNS``) for up to ``count`` of the most active authors.

        Only authors of the first ``among`` messages are considered, so pass the number of
        messages you generate. Angry VIPs come first, then people known on two channels, then
        the most active of the rest; bots and review-only authors are never customers.
        """
        stream = _Stream(self)
        activity: Counter[int] = Counter()
        angry: Counter[int] = Counter()
        praise: Counter[int] = Counter()
        questions: Counter[int] = Counter()
        for _ in range(among):
            mention = stream.next()
            activity[mention.author_id] += 1
            if mention.sentiment == "negative":
                angry[mention.author_id] += 1
            if mention.kind == "praise":
                praise[mention.author_id] += 1
            if mention.kind == "question":
                questions[mention.author_id] += 1
        people = [
            p
            for p in stream.personas
            if activity[p.pid] and p.role != "bot" and any(c != "rss" for c in p.channels)
        ]
        people.sort(key=lambda p: (-activity[p.pid], p.pid))
        vips = [p for p in people if p.role == "vip" and angry[p.pid]]
        linked = [p for p in people if p not in vips and len(p.channels) > 1]
        chosen = vips[: max(3, count // 4)] + linked[:3]
        chosen += [p for p in people if p not in chosen][: max(0, count - len(chosen))]
        chosen = chosen[:count]
        chosen.sort(key=lambda p: (-activity[p.pid], p.pid))
        return [
            self._customer_row(
                p, praise=praise[p.pid], questions=questions[p.pid], total=activity[p.pid]
            )
            for p in chosen
        ]

    def _customer_row(
        self, persona: _Persona, *, praise: int, questions: int, total: int
    ) -> dict[str, str]:
        rng = random.Random(f"{self.seed}/customer/{persona.pid}")
        vip = persona.role == "vip"
        if vip:
            value = rng.uniform(3_000, 25_000)
        else:
            value = min(20_000.0, rng.lognormvariate(math.log(400), 1.0))
        tier = "vip" if vip else ("gold" if value > 1_500 else "standard")
        if persona.company is not None:
            segment = "business"
        elif persona.followers > 10_000:
            segment = "creator"
        else:
            segment = "consumer"
        tags = rng.sample(
            ["newsletter", "app_user", "early_adopter", "beta_tester", "loyalty_member", "student"],
            rng.randint(0, 3),
        )
        if vip:
            tags.append("key_account")
        if praise * 2 >= total >= 2:
            stage = "advocate"
        elif questions == total and not vip and rng.random() < 0.6:
            stage = "prospect"
            value = 0.0
            tier = "standard"
        else:
            stage = "customer"
        handles = persona.authors
        return {
            "name": persona.full_name,
            "email": persona.email,
            "tier": tier,
            "segment": segment,
            "lifetime_value": f"{value:.2f}",
            "tags": ";".join(sorted(tags)),
            "x_handle": handles["x"].handle or "" if "x" in handles else "",
            "mastodon_handle": handles["mastodon"].handle or "" if "mastodon" in handles else "",
            "reddit_handle": handles["reddit"].handle or "" if "reddit" in handles else "",
            "do_not_contact": "true" if not vip and rng.random() < 0.08 else "false",
            "lifecycle_stage": stage,
        }
