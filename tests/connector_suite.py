"""One conformance suite every polling connector must pass (think Singer's get_tap_test_class).

To plug a connector in, write a *harness* for it (the :class:`ConnectorHarness` protocol: how
to build the connector against its stand-in, how to make new messages appear, how to make the
stand-in misbehave) and subclass :class:`ConnectorSuite` with a ``harness`` fixture::

    class TestRssConnector(ConnectorSuite):
        @pytest.fixture
        async def harness(self) -> AsyncIterator[ConnectorHarness]:
            async with FeedHarness.running() as harness:
                yield harness

The suite comes in parts, and a connector's test class takes the parts that apply to its
channel: :class:`ConnectorSuite` (every connector), :class:`RateLimitSuite`,
:class:`FailureSuite` (passing failures and broken answers, run for each fault the class lists
in ``faults``), :class:`BadItemSuite` and :class:`ReplySuite`. Nothing is skipped: a test that
does not apply to a channel is not part of its class. The suite gets batches with
``connector.fetch(cursor)``; a harness for a push connector (webhook) may define
``async receive(connector, cursor) -> Batch`` to hand over what ``publish`` pushed instead. The
suite never sleeps and asserts no timings; the harness owns every server and session and closes
them.
"""

from __future__ import annotations

from typing import Any, Protocol

import pytest

from socialcrm.connector import (
    AuthError,
    Batch,
    Connector,
    Cursor,
    InboundMessage,
    MalformedPayload,
    OutboundReply,
    ReplyingConnector,
    RetryableError,
)

#: Faults a harness may offer (``ConnectorHarness.faults``).
FAULTS = frozenset(
    {"rate_limit", "server_error", "timeout", "truncated", "html", "bad_envelope", "bad_item"}
)
#: Fetches one drain may take before the suite calls it an endless loop.
MAX_FETCHES = 25


class ConnectorHarness(Protocol):
    """What the suite needs to drive one connector against its stand-in."""

    #: Items the connector asks for per page; the suite publishes more to make it page.
    page_size: int
    #: Faults :meth:`inject` can serve (a subset of :data:`FAULTS`).
    faults: frozenset[str]

    def connector(self, *, valid_credentials: bool = True) -> Connector:
        """A new connector instance (a "restart"), with good or refused credentials."""
        ...

    async def publish(self, count: int) -> list[str]:
        """Make ``count`` new messages visible to the connector; their external ids."""
        ...

    def inject(self, fault: str) -> None:
        """Make the connector's next request get ``fault`` (``bad_item``: its next page)."""
        ...

    def rate_limit_wait_s(self) -> float | None:
        """Seconds the last rate-limit answer's headers ask to wait, as of now."""
        ...

    def replies(self) -> list[tuple[str, str]] | None:
        """``(in_reply_to, text)`` of each reply the stand-in received; None: no replies."""
        ...


async def fetch(
    harness: Any, connector: Connector, cursor: Cursor | None, *, streams_may_fail: bool = False
) -> Batch:
    """One batch, the way the core gets it: ``fetch``, or the harness's ``receive`` (push).

    A stream that failed alone raises its error unless ``streams_may_fail`` (the test looks
    at ``stream_errors`` itself)."""
    receive = getattr(harness, "receive", None)
    if receive is not None:
        batch: Batch = await receive(connector, cursor)
        return batch
    batch = await connector.fetch(cursor)
    # A stream that failed alone (its error in ``stream_errors``) is a failure the suite
    # checks like a whole-source one: the drain that follows must still lose nothing.
    if batch.stream_errors and not streams_may_fail:
        raise next(iter(batch.stream_errors.values()))
    return batch


async def drain(
    connector: Connector,
    cursor: Cursor | None,
    harness: Any = None,
    *,
    streams_may_fail: bool = False,
) -> tuple[list[InboundMessage], Batch]:
    """Fetch until the connector has nothing more right now, as the core's poll does."""
    messages: list[InboundMessage] = []
    for _ in range(MAX_FETCHES):
        batch = await fetch(harness, connector, cursor, streams_may_fail=streams_may_fail)
        assert batch.cursor is not None, "a fetch must hand back a cursor"
        assert not batch.quarantined, [q.error for q in batch.quarantined]
        messages.extend(batch.messages)
        cursor = batch.cursor
        if not batch.more:
            return messages, batch
    raise AssertionError(f"still 'more' after {MAX_FETCHES} fetches")


def ids(messages: list[InboundMessage]) -> list[str]:
    """External ids, in order."""
    return [m.external_id for m in messages]


class ConnectorSuite:
    """The tests every connector passes; a subclass provides the ``harness`` fixture."""

    async def test_messages_are_well_formed(self, harness: ConnectorHarness) -> None:
        published = await harness.publish(3)
        connector = harness.connector()
        messages, _ = await drain(connector, None, harness)
        assert sorted(ids(messages)) == sorted(published)
        for message in messages:
            assert message.channel == connector.channel
            assert message.external_id
            assert message.raw, "the raw payload is kept"
            assert message.author.user_id or message.author.handle or message.author.email

    async def test_pagination_to_the_end(self, harness: ConnectorHarness) -> None:
        published = await harness.publish(harness.page_size * 2 + 1)
        messages, _ = await drain(harness.connector(), None, harness)
        assert sorted(ids(messages)) == sorted(published)

    async def test_cursor_resumes_after_restart(self, harness: ConnectorHarness) -> None:
        await harness.publish(3)
        _, last = await drain(harness.connector(), None, harness)
        newer = await harness.publish(harness.page_size + 2)
        messages, _ = await drain(harness.connector(), last.cursor, harness)
        assert sorted(ids(messages)) == sorted(newer)

    async def test_no_duplicates_across_polls(self, harness: ConnectorHarness) -> None:
        connector = harness.connector()
        first = await harness.publish(4)
        got, last = await drain(connector, None, harness)
        second = await harness.publish(harness.page_size + 1)
        more, last = await drain(connector, last.cursor, harness)
        again, _ = await drain(connector, last.cursor, harness)
        everything = ids(got) + ids(more)
        assert len(everything) == len(set(everything)), "a message came twice"
        assert sorted(everything) == sorted(first + second)
        assert again == [], "a poll with nothing new returns nothing"

    async def test_refused_credentials_are_an_auth_error(self, harness: ConnectorHarness) -> None:
        await harness.publish(1)
        with pytest.raises(AuthError):
            await fetch(harness, harness.connector(valid_credentials=False), None)


class RateLimitSuite:
    """For channels with rate limits: a 429 is retryable after the platform's reset."""

    async def test_rate_limit_is_retryable_after_the_reset(self, harness: ConnectorHarness) -> None:
        published = await harness.publish(2)
        connector = harness.connector()
        harness.inject("rate_limit")
        with pytest.raises(RetryableError) as caught:
            await fetch(harness, connector, None)
        expected = harness.rate_limit_wait_s()
        assert expected is not None and caught.value.retry_after_s is not None
        assert caught.value.retry_after_s == pytest.approx(expected, abs=2.0)
        messages, _ = await drain(connector, None, harness)
        assert sorted(ids(messages)) == sorted(published), "nothing lost to the 429"


class FailureSuite:
    """For fetching connectors: passing failures and broken answers lose nothing.

    Each test runs once for each of its faults that the class lists in ``faults``.
    """

    faults: frozenset[str] = frozenset()
    #: The faults each test may run with.
    FAULTS_OF: dict[str, tuple[str, ...]] = {
        "test_passing_failures_are_retryable": ("server_error", "timeout"),
        "test_a_broken_response_fails_the_fetch": ("truncated", "html", "bad_envelope"),
    }

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize ``fault`` with the faults this connector's stand-in can serve."""
        candidates = self.FAULTS_OF.get(metafunc.function.__name__)
        if candidates is None:
            return
        served = [f for f in candidates if f in self.faults]
        assert served, f"{type(self).__name__} serves none of {candidates}; drop FailureSuite"
        metafunc.parametrize("fault", served)

    async def test_passing_failures_are_retryable(
        self, harness: ConnectorHarness, fault: str
    ) -> None:
        published = await harness.publish(2)
        connector = harness.connector()
        harness.inject(fault)
        with pytest.raises(RetryableError):
            await fetch(harness, connector, None)
        messages, _ = await drain(connector, None, harness)
        assert sorted(ids(messages)) == sorted(published)

    async def test_a_broken_response_fails_the_fetch(
        self, harness: ConnectorHarness, fault: str
    ) -> None:
        published = await harness.publish(3)
        connector = harness.connector()
        harness.inject(fault)
        with pytest.raises((MalformedPayload, RetryableError)):
            await fetch(harness, connector, None)
        messages, _ = await drain(connector, None, harness)
        assert sorted(ids(messages)) == sorted(published), "nothing lost to the bad answer"


class BadItemSuite:
    """One item that cannot be read is quarantined; the rest of the batch goes on."""

    async def test_a_bad_item_is_quarantined_and_the_rest_goes_on(
        self, harness: ConnectorHarness
    ) -> None:
        published = await harness.publish(harness.page_size)
        connector = harness.connector()
        harness.inject("bad_item")
        batch = await fetch(harness, connector, None)
        got = list(batch.messages)
        quarantined = list(batch.quarantined)
        cursor = batch.cursor
        while batch.more:
            batch = await fetch(harness, connector, cursor)
            got += batch.messages
            quarantined += batch.quarantined
            cursor = batch.cursor
        assert len(quarantined) == 1, [q.error for q in quarantined]
        assert quarantined[0].raw and quarantined[0].error
        assert len(got) == len(published) - 1
        assert set(ids(got)) < set(published)
        after, _ = await drain(connector, cursor, harness)
        assert after == [], "the cursor moved past the bad item"


class ReplySuite:
    """For channels that take replies: one send is one reply, threaded to the message."""

    async def test_send_posts_exactly_one_threaded_reply(self, harness: ConnectorHarness) -> None:
        await harness.publish(2)
        connector = harness.connector()
        assert isinstance(connector, ReplyingConnector)
        messages, _ = await drain(connector, None, harness)
        target = messages[-1]
        receipt = await connector.send(
            OutboundReply(
                reply_id=41,
                channel=connector.channel,
                text="Sorry about that! We have sent you a DM with a fix.",
                in_reply_to=target.external_id,
                to_handle=target.author.handle,
            )
        )
        assert receipt.external_id
        replies = harness.replies()
        assert replies is not None and len(replies) == 1
        in_reply_to, text = replies[0]
        assert in_reply_to == target.external_id
        assert "We have sent you a DM" in text
