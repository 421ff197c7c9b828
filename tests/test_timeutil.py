"""Instants read from text: the API's `parse_instant` and the raw layer's `event_ms` agree."""

import random
from datetime import UTC, datetime, timedelta

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
