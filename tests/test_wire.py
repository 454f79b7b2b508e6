"""The pure fan-out rules and wire shapes, without any I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from chalicelib.model import ReadReceipt, StoredMessage
from chalicelib.wire import (
    Push,
    iso,
    plan_echo,
    plan_new_message,
    plan_read,
)

SENT = datetime(2026, 11, 28, 10, 33, 11, 123456, tzinfo=UTC)
MESSAGE = StoredMessage("m-1", "c-1", "alice", "t-1", "hi", SENT)


def test_iso_has_milliseconds_and_z() -> None:
    assert iso(SENT) == "2026-11-28T10:33:11.123Z"
    assert iso(SENT.astimezone(timezone(timedelta(hours=5)))) == "2026-11-28T10:33:11.123Z"
    assert iso(SENT.replace(microsecond=0)) == "2026-11-28T10:33:11.000Z"


def test_iso_truncates_to_milliseconds_across_offsets_and_dates() -> None:
    # isoformat's output, cut and suffixed, must equal the spelled-out format for every instant.
    for moment, offset_h in [
        (datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -3),
        (datetime(2027, 1, 1, 0, 0, 0, 999, tzinfo=UTC), 14),
        (datetime(2028, 2, 29, 12, 0, 0, 1000, tzinfo=UTC), 0),
    ]:
        local = moment.astimezone(timezone(timedelta(hours=offset_h)))
        expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        assert iso(local) == expected


def test_new_message_goes_to_every_connection_once_sender_included() -> None:
    pushes = plan_new_message(
        MESSAGE, ["alice", "bob", "carol"], {"alice": ["a1", "a2"], "bob": ["b1", "b1"], "dave": ["d1"]}
    )
    assert [p.connection_id for p in pushes] == ["a1", "a2", "b1"]
    assert all(p.frame == pushes[0].frame for p in pushes)
    assert pushes[0].frame == {
        "type": "new-message",
        "messageId": "m-1",
        "tempMessageId": "t-1",
        "conversationId": "c-1",
        "senderId": "alice",
        "content": "hi",
        "sentAt": "2026-11-28T10:33:11.123Z",
    }


def test_retry_echo_goes_to_the_retrying_connection_only() -> None:
    assert [p.connection_id for p in plan_echo(MESSAGE, "a2")] == ["a2"]


def test_read_that_advanced_reaches_reader_and_others_with_receipt() -> None:
    pushes = plan_read(
        "c-1", "bob", ["alice", "bob"], {"alice": ["a1"], "bob": ["b1", "b2"]}, "b2", ReadReceipt("m-1", SENT)
    )
    assert sorted(p.connection_id for p in pushes) == ["a1", "b1", "b2"]
    assert pushes[0].frame == {
        "type": "read-messages",
        "conversationId": "c-1",
        "userId": "bob",
        "lastReadMessageId": "m-1",
        "readAt": "2026-11-28T10:33:11.123Z",
    }


def test_read_that_moved_nothing_is_acknowledged_to_its_connection_only() -> None:
    assert plan_read("c-1", "bob", ["alice", "bob"], {"alice": ["a1"], "bob": ["b1"]}, "b1", None) == [
        Push("b1", {"type": "read-messages", "conversationId": "c-1", "userId": "bob"})
    ]


def test_reading_connection_is_answered_even_if_the_registry_lost_it() -> None:
    pushes = plan_read("c-1", "bob", ["bob"], {"bob": []}, "b9", ReadReceipt("m-1", SENT))
    assert [p.connection_id for p in pushes] == ["b9"]
