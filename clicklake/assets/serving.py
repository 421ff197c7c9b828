"""The online store as a Dagster asset: `serving_lookup`, kept fresh by a landing sensor, and the
`online_matches_lookup` check against the time-travel lookup table.

The sensor only lists keys (cheap ticks): per stream, the landing hour folders from its cursor's
hour up to now, keeping keys greater than the cursor (Firehose keys sort by time within a
stream). Each batch of new keys becomes one run (`run_key` = the batch's last keys) that folds
exactly those files; a file already folded is skipped, so a retried or duplicated run is harmless.

Rebuild: `rebuild: true` clears the store and refolds every landing file. Refolding is chosen over
starting from the latest `user_profiles` snapshot because the online state also holds what a
snapshot does not (event-level recent history, click attributions, dedup markers), and the one
fold path then defines the state: rebuilt = incrementally folded, by construction.
"""

import hashlib
import random
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import orjson
from pydantic import Field

from clicklake.platform import landing
from clicklake.platform.lookup import LookupTable
from clicklake.platform.online import BeforeHorizon, fold_files, horizon_ms
from clicklake.platform.online.state import StaleLayout
from clicklake.platform.timeutil import HOUR_MS, iso
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import OnlineStoreResource

SENSOR_INTERVAL_S = 15
MAX_FILES_PER_RUN = 2000
FILES_PER_COMMIT = MAX_FILES_PER_RUN  # a run's files fold in one commit (a rebuild: in several)
CHECK_SAMPLE_USERS = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ServingLookupConfig(dg.Config):
    files: list[str] = Field(default_factory=list,
                             description="Landing keys to fold; empty = every key not yet folded.")
    rebuild: bool = Field(default=False,
                          description="Clear the online store and refold every landing file.")


@dg.asset(group_name="serving", kinds={"sqlite", "dynamodb"}, pool="online_fold")
def serving_lookup(context: dg.AssetExecutionContext, config: ServingLookupConfig,
                   lake: LakeResource, online_store: OnlineStoreResource) -> dg.MaterializeResult:
    """Every user's features "as of now" for the REST API: lifetime, 1 h, 24 h and 7 d counters,
    last-event times, campaigns and domains, per-campaign counts, segment CTR counters and the
    latest prediction score, folded from the landing files in micro-batches (each file once,
    atomically). Same verdicts, dedup and windows as the batch path."""
    store, state = lake.store(), online_store.state()
    prefix = f"{lake.landing_prefix}/"
    if config.rebuild:
        state.clear()
    keys = config.files if config.files and not config.rebuild else store.list(prefix)
    # The whole micro-batch in one atomic commit: each document and counter row written once.
    rebuilt_for = None
    try:
        report = fold_files(state, store, keys, prefix=lake.landing_prefix,
                            files_per_commit=FILES_PER_COMMIT)
    except StaleLayout as exc:
        # The store has an older clicklake's table layout, or a newer one's documents (refused
        # before anything was written). Its state is derived from the landing zone, so
        # upgrading (or rolling back) is a rebuild, not an error.
        rebuilt_for = str(exc)
        context.log.warning(f"{exc} (now, from every landing file)")
        state.clear()
        report = fold_files(state, store, store.list(prefix), prefix=lake.landing_prefix,
                            files_per_commit=FILES_PER_COMMIT)
    context.log.info(f"folded {report.files} files, {report.events_total} events in "
                     f"{report.seconds:.2f} s")
    wm = report.watermark_ms
    return dg.MaterializeResult(metadata={
        "files_folded": report.files,
        "files_skipped": report.skipped,
        "lines": report.lines,
        "events_folded": report.events_total,
        **{f"events_{s}": report.events.get(s, 0) for s in landing.STREAMS},
        "quarantined": dg.MetadataValue.json(dict(report.quarantined)),
        "quarantined_total": sum(report.quarantined.values()),
        "watermark": iso(wm) if wm is not None else "none",
        "watermark_ms": wm if wm is not None else 0,
        "fold_events_per_s": round(report.events_per_second, 1) if report.events_total else 0.0,
        "fold_seconds": round(report.seconds, 3),
        "rows_purged": report.purged,
        "rebuild": config.rebuild or rebuilt_for is not None,
        "rebuild_reason": ("requested" if config.rebuild else rebuilt_for or "none"),
    })


# -- the sensor ----------------------------------------------------------------------------------


# A landing file may become visible after files with later keys (two Firehose buffers, a
# retried delivery): the sensor looks back this far behind its newest key and remembers the
# keys it requested there, instead of taking only keys after its newest one (which lost such a
# file for good). Files later than this behind their key time are past the allowed lateness,
# which the raw layer's partitions do not wait for either.
LOOKBACK_MS = HOUR_MS
MAX_REMEMBERED = 5_000  # keys per stream in the cursor (~0.5 MB); older ones count as seen: `floor`


def _seen(entry) -> tuple[list[str], str | None]:
    """(remembered keys, floor: keys at or below it count as seen) of a cursor's stream entry;
    an entry of the earlier cursor (the newest key alone) remembers nothing below it."""
    if entry is None:
        return [], None
    if isinstance(entry, str):
        return [entry], entry
    return list(entry.get("keys", [])), entry.get("floor")


def new_landing_keys(store, cursor: dict, now_ms: int, prefix: str = landing.DEFAULT_PREFIX,
                     late: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Per stream, the landing keys not requested yet, in key order: those at most
    `LOOKBACK_MS` behind the newest requested one that the cursor does not remember, and every
    later one. Lists only the hour folders from there to now's (a stream never seen is listed
    whole, once). Keys listed there but further behind, not seen before, go to `late`."""
    out: dict[str, list[str]] = {}
    for stream in landing.STREAMS:
        keys_seen, floor = _seen(cursor.get(stream))
        newest = landing.parse_key(max(keys_seen)) if keys_seen else None
        if newest is None:
            keys, since = store.list(f"{prefix}/{stream}/"), None
        else:
            since = newest.arrival_ms - LOOKBACK_MS
            keys = []
            h = since - since % HOUR_MS
            while h <= now_ms - now_ms % HOUR_MS + HOUR_MS:  # an hour ahead: clocks drift
                keys += store.list(landing.hour_prefix(stream, h, prefix))
                h += HOUR_MS
        seen = set(keys_seen)
        new = []
        for k in keys:
            if k in seen or (floor is not None and k <= floor) or ".tmp-" in k:
                continue
            lf = landing.parse_key(k)
            if lf is not None and (since is None or lf.arrival_ms >= since):
                new.append(k)
            elif lf is not None and late is not None:
                late.setdefault(stream, []).append(k)
        out[stream] = sorted(new)
    return out


def _remember(entry, added: list[str]) -> dict:
    """A stream's cursor entry after requesting `added`: the keys at most `LOOKBACK_MS` behind
    the newest (at most `MAX_REMEMBERED`), the older ones folded into `floor`."""
    keys, floor = _seen(entry)
    keys = sorted(set(keys) | set(added))
    newest = landing.parse_key(keys[-1])
    since = newest.arrival_ms - LOOKBACK_MS if newest is not None else None
    # every key here came from `new_landing_keys`, which takes only keys it can parse
    keep = [k for k in keys if since is None or landing.parse_key(k).arrival_ms >= since]
    keep = keep[-MAX_REMEMBERED:]
    gone = [k for k in keys if k < keep[0]] if keep else keys
    if gone:
        floor = max([gone[-1]] + ([floor] if floor is not None else []))
    return {"keys": keep, "floor": floor}


def plan_runs(new: dict[str, list[str]], cursor: dict, max_files: int = MAX_FILES_PER_RUN,
              late: dict[str, list[str]] | None = None) -> tuple[list[dg.RunRequest], dict]:
    """Run requests of at most `max_files` keys (in arrival order across streams) and the cursor
    after them, which also counts the `late` keys as seen (reported once, never folded)."""
    files = sorted((lf, stream) for stream, keys in new.items() for k in keys
                   if (lf := landing.parse_key(k)) is not None)
    requests, cursor = [], dict(cursor)
    added: dict[str, list[str]] = {}
    for i in range(0, len(files), max_files):
        batch = files[i:i + max_files]
        keys = [lf.key for lf, _ in batch]
        for lf, stream in batch:
            added.setdefault(stream, []).append(lf.key)
        run_key = "fold-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        requests.append(dg.RunRequest(
            run_key=run_key,
            run_config=dg.RunConfig(ops={"serving_lookup": ServingLookupConfig(files=keys)}),
            tags={"clicklake/files": str(len(keys)), "clicklake/first_arrival": iso(
                batch[0][0].arrival_ms), "clicklake/last_arrival": iso(batch[-1][0].arrival_ms)}))
    for stream, keys in late.items() if late else ():
        added.setdefault(stream, []).extend(keys)
    for stream, keys in added.items():
        cursor[stream] = _remember(cursor.get(stream), keys)
    return requests, cursor


@dg.sensor(name="landing_to_serving", asset_selection=[serving_lookup],
           minimum_interval_seconds=SENSOR_INTERVAL_S,
           default_status=dg.DefaultSensorStatus.STOPPED)
def landing_to_serving(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    """New landing files → one `serving_lookup` micro-batch run per batch (cursor: per stream,
    the keys requested in the last `LOOKBACK_MS` of key time; see `new_landing_keys`)."""
    cursor = orjson.loads(context.cursor) if context.cursor else {}
    late: dict[str, list[str]] = {}
    new = new_landing_keys(lake.store(), cursor, int(time.time() * 1000), lake.landing_prefix,
                           late)
    requests, cursor = plan_runs(new, cursor, late=late)
    if late:
        keys = sorted(k for ks in late.values() for k in ks)
        context.log.warning(
            f"{len(keys)} landing files became visible more than {LOOKBACK_MS // 60_000} min "
            f"after their key time: not folded online (the raw layer does not wait for them "
            f"either; rebuild serving_lookup and re-materialize their raw hours to take them): "
            f"{', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
    if not requests:
        return dg.SensorResult(skip_reason="no new landing files", cursor=orjson.dumps(
            cursor).decode())
    return dg.SensorResult(run_requests=requests, cursor=orjson.dumps(cursor).decode())


# -- the check -----------------------------------------------------------------------------------

COMPARED = ("impressions", "clicks", "impressions_1h", "clicks_1h", "impressions_24h",
            "clicks_24h", "impressions_7d", "clicks_7d", "distinct_campaigns", "distinct_domains",
            "last_impression_ts", "last_click_ts")
SPEND = ("spend", "spend_1h", "spend_24h", "spend_7d")


def comparison_instant(watermark_ms: int, last_snapshot_hour: int, lateness_ms: int) -> int:
    """The instant both sides know completely. Online: every file with arrival <= watermark is
    folded, and an event of hour h may still arrive until h + 1 h + lateness, so hours ending by
    floor(watermark) - lateness are complete. Lake: raw partitions up to the last snapshot's hour
    are built. The earlier of the two."""
    online_complete = watermark_ms - watermark_ms % HOUR_MS - lateness_ms
    return min(online_complete - online_complete % HOUR_MS, last_snapshot_hour + HOUR_MS)


def sample_users(lookup: LookupTable, at_ms: int, n: int = CHECK_SAMPLE_USERS) -> list[str]:
    """A deterministic sample (seeded by the instant) of the users of the last snapshot before
    `at_ms`."""
    hours = lookup.snapshot_hours()
    snap_hour = int(hours[hours < at_ms][-1]) if (hours < at_ms).any() else int(hours[0])
    users = lookup.snapshot(snap_hour, ["user_id"])["user_id"].to_pylist()
    return sorted(random.Random(at_ms).sample(users, min(n, len(users))))


@dg.asset_check(asset=serving_lookup, name="online_matches_lookup")
def online_matches_lookup(lake: LakeResource, online_store: OnlineStoreResource
                          ) -> dg.AssetCheckResult:
    """A sample of users' online profiles equal the time-travel lookup at the same instant W:
    the latest instant both have complete (see `comparison_instant`): files still arriving late
    for hours after W are in neither comparison."""
    from clicklake.platform.raw import Rules

    online = online_store.features()
    wm = online.watermark_ms()
    lookup = LookupTable(lake.store(), lake.lake_prefix)
    hours = lookup.snapshot_hours()
    if wm is None or not len(hours):
        return dg.AssetCheckResult(passed=True, metadata={"compared_users": 0, "reason":
                                   "nothing to compare yet (no folded file or no snapshot)"})
    w = comparison_instant(wm, int(hours[-1]), Rules().allowed_lateness_ms)
    if w < horizon_ms(wm):
        return dg.AssetCheckResult(passed=True, metadata={
            "compared_users": 0, "reason": f"lake snapshots end at {iso(w)}, before the online "
            "horizon: materialize user_profiles"})
    sample = sample_users(lookup, w)
    diffs = []
    moved = 0
    for u in sample:
        try:
            on = online.profile(u, w) or {}
        except BeforeHorizon:  # a fold committed since `wm` and moved the horizon past w
            moved += 1
            continue
        off = lookup.profile(u, w)
        for name in COMPARED:
            a, b = on.get(name, 0 if "ts" not in name else None), off[name]
            if isinstance(b, datetime):  # exact integer ms, no float round trip
                b = (b - _EPOCH) // timedelta(milliseconds=1)
            if a != b:
                diffs.append({"user": u, "field": name, "online": a, "lookup": b})
        for name in SPEND:
            if abs(on.get(name, 0.0) - off[name]) > 1e-9 * max(1.0, abs(off[name])):
                diffs.append({"user": u, "field": name, "online": on.get(name),
                              "lookup": off[name]})
    return dg.AssetCheckResult(passed=not diffs, metadata={
        "compared_users": len(sample) - moved, "skipped_past_horizon": moved,
        "at": iso(w), "watermark": iso(wm),
        "mismatches": len(diffs), "first_mismatches": dg.MetadataValue.json(diffs[:20])})


serving_assets = [serving_lookup]
serving_sensors = [landing_to_serving]
serving_checks = [online_matches_lookup]
