"""How X measures a post: its weighted length (twitter-text v3), shared by the X connector and
the X stand-in."""

from __future__ import annotations

import re
from typing import Final

#: Longest post in weighted characters (twitter-text v3: most scripts 1, CJK and emoji 2).
MAX_POST_WEIGHT: Final = 280
_URL = re.compile(r"https?://\S+", re.IGNORECASE)


def post_weight(text: str) -> int:
    """A post's length as X counts it (twitter-text v3): a link is 23, most characters 1,
    the rest (CJK, emoji) 2."""
    weight = 0
    rest = _URL.sub("", text)
    weight += 23 * len(_URL.findall(text))
    for char in rest:
        code = ord(char)
        light = code <= 4351 or 8192 <= code <= 8205 or 8208 <= code <= 8223 or 8242 <= code <= 8247
        weight += 1 if light else 2
    return weight
