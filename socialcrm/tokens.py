"""Tokens a source's connector obtained at run time, kept in the store (``sourcetoken``).

The core hands a :class:`SourceTokens` to a connector that takes one (the ``tokens`` keyword),
as it hands the HTTP session: the connector never touches the database, and a refresh token
rotated before a restart, or by another daemon, is the one used next.
"""

from __future__ import annotations

from pydantic import SecretStr

from socialcrm.connector import TokenSet
from socialcrm.db import Store
from socialcrm.models import SourceToken, utcnow


class SourceTokens:
    """The :class:`~socialcrm.connector.TokenStore` of one source, backed by the store."""

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source

    def __repr__(self) -> str:
        return f"SourceTokens(source={self.source!r})"

    async def load(self) -> TokenSet | None:
        """The tokens saved last for this source."""
        async with self.store.reader() as s:
            row = await s.get(SourceToken, self.source)
        if row is None:
            return None
        return TokenSet(
            access_token=SecretStr(row.access_token),
            refresh_token=SecretStr(row.refresh_token) if row.refresh_token else None,
            expires_at=row.expires_at,
        )

    async def save(self, tokens: TokenSet) -> None:
        """Keep ``tokens`` for this source, replacing the ones before."""
        async with self.store.session() as s:
            row = await s.get(SourceToken, self.source, with_for_update=True)
            if row is None:
                row = SourceToken(source=self.source, access_token="")
                s.add(row)
            row.access_token = tokens.access_token.get_secret_value()
            row.refresh_token = (
                tokens.refresh_token.get_secret_value() if tokens.refresh_token else None
            )
            row.expires_at = tokens.expires_at
            row.updated_at = utcnow()
