"""The online fold's per-user event index (`user_state.EventIndex`) answers as the scans it
replaces for users with many events (`find_click`, `latest_impression`), ties, duplicates and
appends between lookups included; and a click farm's fold is no longer quadratic."""

from __future__ import annotations

import random

from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform.online import user_state as us


@settings(max_examples=examples(200), deadline=None)
@given(st.data())
def test_the_index_answers_as_the_scans(data):
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    doc = {"ev": []}
    idx = us.EventIndex(doc["ev"])
    for _ in range(data.draw(st.integers(1, 6))):  # appends, then lookups, again and again
        for _ in range(data.draw(st.integers(0, 40))):
            ts, eid = rng.randrange(0, 50), f"e{rng.randrange(0, 8)}"  # ties and repeats
            kind = rng.randrange(2)
            doc["ev"].append([ts, kind, eid, "c", None, None, 0] if kind
                             else [ts, kind, eid, "c", None, 0.0, "FR"])
        for _ in range(20):
            lo, hi = sorted((rng.randrange(-5, 60), rng.randrange(-5, 60)))
            assert idx.latest_impression(lo, hi) is us.latest_impression(doc, lo, hi)
            ts, eid = rng.randrange(0, 50), f"e{rng.randrange(0, 8)}"
            assert idx.find_click(ts, eid) is us.find_click(doc, ts, eid)


def test_a_click_farm_folds_the_same_through_the_index(tmp_path, monkeypatch):
    """A user with hundreds of impressions and clicks without an impression id, in files that
    bring clicks before and after their impressions: the state folded with the index equals
    the one folded with the scans (every document, counter and mark)."""
    import orjson

    from clicklake.platform import landing
    from clicklake.platform.online import SqliteState, fold, fold_files
    from clicklake.platform.storage import Store

    h = 1_795_611_600_000  # 2026-11-25T13:00Z
    store = Store(str(tmp_path / "lake"))
    rng = random.Random(5)
    for n in range(6):  # files alternating clicks and impressions, arriving in order
        arrival = h + (n + 1) * 5 * 60_000
        kind = "clicks" if n % 2 == 0 else "impressions"
        rows = []
        for i in range(120):
            ts = h + rng.randrange(0, 30 * 60_000)
            if kind == "impressions":
                rows.append({"impression_id": f"i{n}-{i}", "ts": ts, "user_id": "bot",
                             "campaign_id": f"c{i % 3}", "domain": f"d{i % 4}.com"})
            else:
                rows.append({"click_id": f"k{n}-{i}", "ts": ts, "user_id": "bot",
                             "campaign_id": f"c{i % 3}"})
        landing.write_file(store, landing.firehose_key(kind, arrival, f"{n:08d}"),
                           [orjson.dumps(r) for r in rows])
    keys = store.list("landing/")
    dumps = []
    for indexed in (10**9, fold.INDEXED_EVENTS):
        monkeypatch.setattr(fold, "INDEXED_EVENTS", indexed)
        state = SqliteState(str(tmp_path / f"online-{indexed}.db"))
        fold_files(state, store, keys, files_per_commit=1)
        dump = state.dump()
        dump["files"] = [f[:1] for f in dump.get("files", [])]
        dumps.append(dump)
    assert dumps[0] == dumps[1]
