"""Messy records, as real producers and pipes deliver them.

Each kind is a small share of a stream's records and matches one quarantine reason of the raw
layer, so the raw layer can be checked to quarantine exactly what was injected:

- duplicate: an event delivered again, byte for byte, in the same or a later object (within the
  allowed lateness, so the copy is a duplicate and not late);
- malformed: a truncated object, garbage bytes, a JSON value that is not an object, two objects
  run together;
- missing_field: a required field absent, null or empty;
- bad_type: a required or optional field of the wrong type ("yesterday" as a time, a list as a
  user id, a number as text);
- bad_value: a negative cost, a score outside [0, 1];
- late: an event arriving more than the allowed lateness after its hour ends;
- future: an event stamped hours after it arrived.

Apart from duplicates, messy records carry fresh ids: they are extra lines, never replacing a
good event, so the good events (and the truth side file) stay complete.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from clicklake.platform.events import (
    BAD_TYPE,
    BAD_VALUE,
    DUPLICATE,
    FUTURE,
    LATE,
    MALFORMED,
    MISSING_FIELD,
    SPECS,
)
from clicklake.platform.simulate.ids import IdSequence
from clicklake.platform.simulate.records import encode, iso_texts
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS

KINDS = (MALFORMED, MISSING_FIELD, BAD_TYPE, BAD_VALUE, FUTURE, LATE, DUPLICATE)
RATES = {
    DUPLICATE: 0.005,
    MALFORMED: 0.002,
    MISSING_FIELD: 0.002,
    BAD_TYPE: 0.003,
    BAD_VALUE: 0.002,
    LATE: 0.003,
    FUTURE: 0.001,
}
LATENESS_MS = HOUR_MS  # the raw layer's default allowed lateness

# Wrong-type replacements per field; none of them is accepted by the event parser.
_BAD_TYPES: dict[str, tuple[object, ...]] = {
    "ts": ("yesterday", True, 1.7e12 + 0.5, ["2026-11-24T00:00:00Z"]),
    "user_id": (["u1", "u2"], {"id": "u1"}, 3.5, False),
    "campaign_id": ({"id": "cmp-0001"}, 12.5),
    "domain": (42, ["news.com"]),
    "ip": (3232235777, ["10.0.0.1"]),
    "user_agent": ({"ua": "Mozilla/5.0"}, 5),
    "cost": ("0.0012", "free", [0.001]),
    "model": (1, ["ctr-v1"]),
    "score": ("0.3", "high", [0.5]),
    "impression_id": (3.5, ["x"], {"id": "x"}),
}


@dataclass
class MessyBatch:
    lines: list[bytes]
    arrivals: np.ndarray
    counts: dict[str, int]


def kinds_for(stream: str) -> tuple[str, ...]:
    """Clicks have no numeric field, so no value can be out of range."""
    return tuple(k for k in KINDS if not (k == BAD_VALUE and stream == "clicks"))


def inject(
    stream: str,
    rng: np.random.Generator,
    records: list[dict],
    lines: list[bytes],
    arrivals: np.ndarray,
    ts: np.ndarray,
    ids: IdSequence,
    scale: float = 1.0,
) -> MessyBatch:
    """Messy lines derived from one batch of good records (which are left untouched)."""
    spec = SPECS[stream]
    n = len(records)
    out_lines: list[bytes] = []
    out_arrivals: list[int] = []
    counts: Counter[str] = Counter()
    if n == 0:
        return MessyBatch([], np.zeros(0, np.int64), {k: 0 for k in KINDS})
    for kind in kinds_for(stream):
        m = int(rng.binomial(n, min(1.0, RATES[kind] * scale)))
        if m == 0:
            continue
        src = rng.integers(0, n, m).tolist()
        counts[kind] += m
        if kind == DUPLICATE:
            # Half re-delivered within a minute (often the same object), half up to 30 min later.
            later = np.where(rng.random(m) < 0.5, rng.integers(0, 60_000, m),
                             rng.integers(MINUTE_MS, 30 * MINUTE_MS, m))
            out_lines.extend(lines[i] for i in src)
            out_arrivals.extend((arrivals[src] + later).tolist())
            continue
        fresh = ids.take(m)
        for j, i in enumerate(src):
            rec = dict(records[i])
            rec[spec.id_field] = fresh[j]
            arrival = int(arrivals[i])
            if kind == MALFORMED:
                line = _malformed(rng, rec)
            elif kind == MISSING_FIELD:
                line = _missing(rng, rec, spec.required)
            elif kind == BAD_TYPE:
                line = _bad_type(rng, rec, spec.fields)
            elif kind == BAD_VALUE:
                line = _bad_value(rng, rec, stream)
            elif kind == LATE:
                event_hour = int(ts[i]) - int(ts[i]) % HOUR_MS
                arrival = (event_hour + HOUR_MS + LATENESS_MS
                           + int(rng.integers(10 * MINUTE_MS, 3 * HOUR_MS)))
                line = encode(rec)
            else:  # FUTURE
                ahead = arrival + int(rng.integers(2 * HOUR_MS, 8 * HOUR_MS))
                rec["ts"] = iso_texts(np.array([ahead]))[0] if rng.random() < 0.5 else ahead
                line = encode(rec)
            out_lines.append(line)
            out_arrivals.append(arrival)
    return MessyBatch(out_lines, np.array(out_arrivals, dtype=np.int64),
                      {k: counts.get(k, 0) for k in KINDS})


def _malformed(rng: np.random.Generator, rec: dict) -> bytes:
    text = encode(rec)
    variant = int(rng.integers(4))
    if variant == 0:  # cut off mid-object: never valid JSON, the closing brace is gone
        return text[: int(rng.integers(1, len(text) - 1))]
    if variant == 1:  # bytes that are not UTF-8 (no newline inside: it would split the line)
        junk = rng.bytes(int(rng.integers(8, 64))).replace(b"\n", b"?")
        return b"\xff\xfe" + junk
    if variant == 2:  # valid JSON, but an array and not an object
        return encode(list(rec.values()))
    return text + text  # two objects run together


def _missing(rng: np.random.Generator, rec: dict, required) -> bytes:
    name, kind = required[int(rng.integers(len(required)))]
    variant = int(rng.integers(3))
    if variant == 0:
        del rec[name]
    elif variant == 1 or kind != "id":  # only an id counts as missing when empty
        rec[name] = None
    else:
        rec[name] = ""
    return encode(rec)


def _bad_type(rng: np.random.Generator, rec: dict, fields) -> bytes:
    names = [n for n, _ in fields if n in _BAD_TYPES]
    name = names[int(rng.integers(len(names)))]
    choices = _BAD_TYPES[name]
    rec[name] = choices[int(rng.integers(len(choices)))]
    return encode(rec)


def _bad_value(rng: np.random.Generator, rec: dict, stream: str) -> bytes:
    if stream == "impressions":
        rec["cost"] = -round(float(rng.uniform(0.0001, 0.01)), 6)
    else:
        rec["score"] = (round(float(rng.uniform(1.01, 3.0)), 4) if rng.random() < 0.5
                        else -round(float(rng.uniform(0.01, 1.0)), 4))
    return encode(rec)
