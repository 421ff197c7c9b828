"""Instants read from text: the API's `parse_instant` and the raw layer's `event_ms` agree."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from clicklake.platform.events import event_ms
from clicklake.platform.timeutil import parse_instant, to_ms


def test_sub_millisecond_digits_are_truncated_as_the_raw_layer_does():
    # the last microsecond of an hour (and of a day) stays in it
    assert parse_instant("2026-11-23T23:59:59.999999+00:00") == to_ms(
        datetime(2026, 11, 23, 23, 59, 59, 999000, tzinfo=UTC))
    assert parse_instant("2026-11-24T09:59:59.9996Z") % 3_600_000 == 3_599_999
    assert parse_instant("2026-11-24T09:15:00.123600") == event_ms("2026-11-24T09:15:00.123600")
    rng = random.Random(3)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        dt = base + timedelta(microseconds=rng.randrange(400 * 86_400 * 10**6))
        for text in (dt.isoformat(), dt.replace(tzinfo=None).isoformat(),
                     dt.astimezone(UTC).isoformat().replace("+00:00", "Z")):
            assert parse_instant(text) == event_ms(text), text


def test_a_date_with_an_offset_is_no_instant_anywhere():
    """Python reads any one character between date and time, so 2026-11-25+05:00 (a date with
    an offset) read as 05:00 on the 25th in the lake, the API and the command line alike, ten
    hours off. Every reader now refuses it; a command line's date alone is still its midnight,
    while the event contract and the API (`date_only=False`) refuse that too."""
    import pytest

    from clicklake.platform.events import Rejected
    from clicklake.platform.timeutil import DateOnly

    for text in ("2026-11-25+05:00", "20261125+0530", "2026-11-25-00:00", "2026-11-25Z"):
        with pytest.raises(ValueError, match="not an ISO-8601 date and time"):
            parse_instant(text)
        with pytest.raises(Rejected):
            event_ms(text)
    assert parse_instant("2026-11-25") == to_ms(datetime(2026, 11, 25, tzinfo=UTC))
    with pytest.raises(DateOnly):
        parse_instant("2026-11-25", date_only=False)
    with pytest.raises(ValueError, match="non-ASCII"):
        parse_instant("\u0661\u0667\u0669\u0665\u0665\u0667\u0663\u0668\u0660\u0660\u0660\u0660")
    # What the shape check lets through reads as before, on both paths.
    for text in ("2026-11-25T10:00:00+05:30", "2026-11-25 10:00Z", "2026-11-25t10:00",
                 "20261125T100000Z", "2026-W48-3T10:00"):
        assert parse_instant(text) == event_ms(text), text


@pytest.mark.parametrize("text", ["2026-11-24T01:00:00\x00", "2026-11-24T01:00:00\x0b",
                                  "2026-11-24T01:00:00Z\x0c", "\x1f2026-11-24T01:00:00",
                                  "1795482000000\n", "2026-11-24T01:00\x7f:00"])
def test_an_instant_with_a_control_character_is_refused(text):
    # fromisoformat ignored a trailing NUL, and stripping took vertical tab and form feed as
    # spaces: the API answered 200 for what it refuses in every id field
    with pytest.raises(ValueError, match="control characters"):
        parse_instant(text)
    with pytest.raises(Exception, match="control characters"):  # an event's time too
        event_ms(text.strip(" "))
    assert parse_instant(" 2026-11-24T01:00:00 ") == parse_instant("2026-11-24T01:00:00")
