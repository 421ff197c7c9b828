"""Benchmark of skewed traffic on the online store (SQLite), each figure beside a baseline of the
same run: what one bot user and one busy minute cost the fold and the API's reads.

1. a bot: `--bot-events` impressions of one user within an hour (50 campaigns, 200 domains),
   beside `--users` ordinary users of a few impressions each, folded into one store. Then, as
   the API's reader (its own connection): `feature_inputs` for the bot "now" (after its last
   event: from its head) and inside its events (from its document, which holds every event
   since the horizon), beside an ordinary user's; a one-event commit touching the bot (a new
   run's state: no cached documents) beside one touching an ordinary user; and a commit of
   20 k small documents in the store holding the bot's document, beside the same commit in a
   store without it (a WITHOUT ROWID table made the first take seconds).
2. a busy minute: `global` and one campaign's segment at `--rates` events/s for a minute; an
   unknown user's `feature_inputs` in that minute as the API's reader makes them: the first
   read after the commit (scans the minute's logs), the second (sorts them), then p50/p99 of
   the next ones (bisections), beside the same reads through `segment_state.windows_24h`,
   which reads and scans the rows every time (the baseline: the read before this round).

Run: python benchmarks/bench_skew.py [--bot-events N --users N --rates R [R ...]]
Writes bench-results/skew.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

from bench_online import pct  # the same percentiles as the online benchmark's

from clicklake.platform.online import OnlineFeatures, SqliteState, fold_rows
from clicklake.platform.online import segment_state as seg
from clicklake.platform.online.fold import USER
from clicklake.platform.online.state import Commit
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, parse_instant

H = parse_instant("2026-11-23T10:00:00Z")
IP, UA = "8.8.8.8", "Mozilla/5.0"
FOLD_ROWS = 50_000  # rows per fold_rows call (one commit each)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _timed(fn, args: list) -> list[int]:
    ns = []
    for a in args:
        t0 = time.perf_counter_ns()
        fn(a)
        ns.append(time.perf_counter_ns() - t0)
    return ns


def _fold(state: SqliteState, rows: list[tuple], tag: str, arrival: int) -> None:
    for i in range(0, len(rows), FOLD_ROWS):
        fold_rows(state, "impressions", rows[i:i + FOLD_ROWS], f"landing/impressions/{tag}{i}",
                  arrival)


def _small_docs_commit(path: str, n: int = 20_000) -> float:
    """Seconds of one commit of n small user documents (and n impression documents)."""
    state = SqliteState(path)
    c = Commit()
    c.record(f"small-{n}", H, {})
    for k in range(n):
        c.put("impression", f"imp-small-{k:09d}", 0, b'{"at":[[0,["US","d"]]],"refs":[]}')
        c.put("user", f"small{k:07d}", 0, b"{}" * 100)
    t0 = time.perf_counter()
    state.commit(c)
    seconds = time.perf_counter() - t0
    state.close()
    return seconds


def bench_bot(root: str, bot_events: int, users: int, reads: int) -> dict:
    rng = random.Random(7)
    step = HOUR_MS // bot_events
    bot = [(f"bot-{k:09d}", H + k * step, "bot", f"cmp-{k % 50}", f"site{k % 200}.com", IP,
            "curl/8", 0.001) for k in range(bot_events)]
    people = [(f"imp-{k:09d}", H + rng.randrange(HOUR_MS - 60_000), f"u{k % users:06d}",
               f"cmp-{rng.randrange(50)}", f"site{rng.randrange(200)}.com", IP, UA, 0.001)
              for k in range(users * 5)]
    path = os.path.join(root, "bot.db")
    writer = SqliteState(path)
    _fold(writer, sorted(bot + people, key=lambda r: r[1]), "a", H + HOUR_MS)
    doc_bytes = len(writer.get_docs(USER, ["bot"])["bot"])
    writer.close()
    online = OnlineFeatures(SqliteState(path))  # the API's reader
    now = H + HOUR_MS + 1_000
    sample = [f"u{rng.randrange(users):06d}" for _ in range(reads)]
    out: dict = {"bot_events": bot_events, "users": users, "bot_document_bytes": doc_bytes}
    for name, fn, args in (
        ("ordinary_user_now", lambda u: online.feature_inputs(u, "cmp-1", now, IP, UA, "x.com"),
         sample),
        ("bot_now", lambda t: online.feature_inputs("bot", "cmp-1", t, IP, UA, "x.com"),
         [now + k for k in range(reads)]),
        ("bot_inside_its_events", lambda t: online.feature_inputs("bot", "cmp-1", t, IP, UA,
                                                                  "x.com"),
         [H + HOUR_MS // 2 + k for k in range(5)]),
    ):
        fn(args[0])  # warm
        out[name] = pct(_timed(fn, args))
    # One more event of the bot, and of an ordinary user, each as a new run's fold
    commits = {}
    for who in ("u000001", "bot"):
        run = SqliteState(path)
        t0 = time.perf_counter()
        fold_rows(run, "impressions", [(f"late-{who}", H + HOUR_MS - 1, who, "cmp-1", "x.com",
                                        IP, UA, 0.001)], f"landing/impressions/late-{who}",
                  H + HOUR_MS + 5)
        commits[who] = time.perf_counter() - t0
        run.close()
    out["one_event_commit_ms"] = {"ordinary_user": _ms(commits["u000001"]),
                                  "bot": _ms(commits["bot"])}
    plain = os.path.join(root, "plain.db")
    SqliteState(plain).close()
    out["commit_of_20k_small_documents_ms"] = {
        "beside_the_bot_document": _ms(_small_docs_commit(path)),
        "baseline_store_without_it": _ms(_small_docs_commit(plain))}
    return out


def bench_busy_minute(root: str, rate: int, reads: int) -> dict:
    n = rate * 60
    m = H + 30 * MINUTE_MS
    rng = random.Random(1)
    rows = [(f"i{k:08d}", m + k * MINUTE_MS // n, f"u{rng.randrange(200_000)}", "hot-campaign",
             f"d{rng.randrange(1000)}.com", IP, UA, 0.001) for k in range(n)]
    path = os.path.join(root, f"busy-{rate}.db")
    writer = SqliteState(path)
    _fold(writer, rows, "m", m + MINUTE_MS + 5_000)
    writer.close()
    reader = SqliteState(path)
    online = OnlineFeatures(reader)
    ts = [m + 59_000 + k for k in range(reads + 2)]

    def read(t: int) -> None:
        online.feature_inputs("newcomer", "hot-campaign", t, IP, UA, "z.com")

    online.check_layout()  # its periodic reads done
    first, second = (_timed(read, [t])[0] for t in ts[:2])
    kept = pct(_timed(read, ts[2:]))
    pairs = [("global", "all"), ("country", "US"), ("campaign", "hot-campaign"),
             ("domain", "z.com")]
    uncached = pct(_timed(lambda t: seg.windows_24h(reader, pairs, t), ts[2:]))
    return {"events_per_s": rate, "minute_log_entries_global": n,
            "feature_inputs_first_read_ms": round(first / 1e6, 3),
            "feature_inputs_second_read_ms": round(second / 1e6, 3),
            "feature_inputs_later_reads": kept,
            "baseline_segment_reads_every_time": uncached,
            "later_reads_p99_over_baseline_p99": round(kept["p99_us"] / uncached["p99_us"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bot-events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--rates", type=int, nargs="+", default=[2_000, 16_000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        out = {"bot": bench_bot(root, args.bot_events, args.users, args.reads)}
        print("bot", json.dumps(out["bot"]), flush=True)
        out["busy_minute"] = []
        for rate in args.rates:
            out["busy_minute"].append(bench_busy_minute(root, rate, args.reads))
            print("busy minute", json.dumps(out["busy_minute"][-1]), flush=True)
    os.makedirs("bench-results", exist_ok=True)
    with open("bench-results/skew.json", "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
