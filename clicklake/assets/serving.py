"""The online store as a Dagster asset: `serving_lookup`, kept fresh by a landing sensor, and the
`online_matches_lookup` check against the time-travel lookup table.

The sensor lists the recent landing keys (cheap ticks: the hour folders from the lookback behind
its newest key on, as long as the raw layer waits for an hour's files: `watch.lookback_ms`) and
asks the online store which are folded (`platform.online.watch`). Each batch of unfolded keys
becomes one run (`run_key` = a hash of the batch) that folds exactly those
files; a file already folded is skipped, so a retried or duplicated run is harmless, and a file
whose run failed is asked again on a later tick.

Rebuild: `rebuild: true` clears the store and refolds every landing file: the one fold path then
defines the state (rebuilt = incrementally folded, by construction). With `from_snapshot: true`
it starts instead from the latest `user_profiles` snapshot that ends before the online horizon
(`platform.online.seed`: the snapshot's counters, ring of hourly tiles, campaigns and domains,
plus the segment profiles, latest scores and the snapshot hour's impressions from the lake) and
folds only the landing files after it, for a landing zone whose old files have expired; its
answers equal the full refold's from the horizon on.
"""

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from clicklake.assets.raw import incomplete_inputs, landing_window
from clicklake.platform import landing
from clicklake.platform.lookup import LookupTable
from clicklake.platform.online import BeforeHorizon, fold_files, horizon_ms, watch
from clicklake.platform.online.fold import IncompleteSeed, seed_mark
from clicklake.platform.online.seed import (
    SeedUnavailable,
    check_seed,
    landing_gap,
    rebuild_from_snapshot,
    seed_hour,
)
from clicklake.platform.online.seed import refold_all as refold_every_file
from clicklake.platform.online.state import StaleLayout, StateStore
from clicklake.platform.profiles import inputs_incomplete_of, stored_footer
from clicklake.platform.raw import Rules
from clicklake.platform.settings import settings
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, iso
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import OnlineStoreResource

SENSOR_INTERVAL_S = 15
MAX_FILES_PER_RUN = 2000
MAX_RUNS_IN_FLIGHT = 4  # runs of new files asked and not over: a backlog goes over several ticks
FILES_PER_COMMIT = MAX_FILES_PER_RUN  # a run's files fold in one commit, unless they hold
# more than fold.MAX_LINES_PER_COMMIT lines (a backlog of a busy stream; a rebuild)
CHECK_SAMPLE_USERS = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ServingLookupConfig(dg.Config):
    files: list[str] = Field(default_factory=list,
                             description="Landing keys to fold; empty = every key not yet folded.")
    rebuild: bool = Field(default=False,
                          description="Clear the online store and refold every landing file.")
    from_snapshot: bool = Field(
        default=False,
        description="With rebuild: start from the latest user_profiles snapshot that ends before "
        "the online horizon and fold only the landing files after it (for a landing zone whose "
        "old files have expired, or a long history); without such a snapshot, every file.")


@dg.asset(group_name="serving", kinds={"sqlite", "dynamodb"}, pool="online_fold")
def serving_lookup(context: dg.AssetExecutionContext, config: ServingLookupConfig,
                   lake: LakeResource, online_store: OnlineStoreResource) -> dg.MaterializeResult:
    """Every user's features "as of now" for the REST API: lifetime, 1 h, 24 h and 7 d counters,
    last-event times, campaigns and domains, per-campaign counts, segment CTR counters and the
    latest prediction score, folded from the landing files in micro-batches (each file once,
    atomically). Same verdicts, dedup and windows as the batch path."""
    store, state = lake.store(), online_store.state()
    rules = settings().rules()  # the raw layer's: same verdicts (`platform.settings`)
    prefix = f"{lake.landing_prefix}/"
    ahead = 0  # landing keys stamped ahead of the clock, left for a later run

    def now_or_before(listed: list[str]) -> list[str]:
        # As the sensor: a key stamped ahead of the clock (a producer's wrong clock) waits for
        # it; folded now, its arrival would move the horizon, and the purge, far ahead.
        nonlocal ahead
        limit = time.time() * 1000 + watch.AHEAD_MS
        kept = [k for k in listed if (lf := landing.parse_key(k)) is None
                or lf.arrival_ms <= limit]
        ahead = max(ahead, len(listed) - len(kept))
        return kept

    keys = now_or_before(config.files if config.files and not config.rebuild
                         else store.list(prefix))
    every = keys if config.rebuild else None  # every landing key, listed once when needed
    seeded, rebuilt_for = None, None

    def all_keys() -> list[str]:
        nonlocal every
        every = every if every is not None else now_or_before(store.list(prefix))
        return every

    def refold_all():
        """Every landing file folded from scratch; seeded from a snapshot instead when the
        landing zone no longer holds the lake's first hours (a refold would lose them)."""
        nonlocal seeded
        gap = landing_gap(store, all_keys(), rules, lake.lake_prefix, lake.landing_prefix)
        if gap is None:
            return refold_every_file(state, store, all_keys(), rules,
                                     landing_prefix=lake.landing_prefix,
                                     files_per_commit=FILES_PER_COMMIT)
        try:
            seeded = seed(None)
        except SeedUnavailable as why:
            raise dg.Failure(f"the online store cannot be rebuilt: {gap}; and no user_profiles "
                             f"snapshot can seed it ({why})") from None
        context.log.warning(f"{gap}: seeded from a snapshot instead")
        return seeded.fold

    def seed(p: int | None):
        """Seed from snapshot p (None: the latest usable one), or SeedUnavailable."""
        lake_keys = {"rules": rules, "lake_prefix": lake.lake_prefix,
                     "landing_prefix": lake.landing_prefix}
        if p is None:
            p = seed_hour(store, all_keys(), **lake_keys)
        else:
            check_seed(store, all_keys(), p, **lake_keys)
        if unsettled := _lake_unsettled(context, p, rules, store, lake.lake_prefix):
            raise SeedUnavailable("; ".join(unsettled[:3]))
        out = rebuild_from_snapshot(state, store, all_keys(), p, **lake_keys,
                                    files_per_commit=FILES_PER_COMMIT)
        context.log.info(f"seeded {out.users} users from the user_profiles snapshot of {iso(p)} "
                         f"in {out.seconds:.1f} s; {out.files_in_snapshot} landing files before "
                         "it recorded, not read")
        return out

    if config.rebuild and config.from_snapshot:
        try:
            seeded = seed(None)
        except SeedUnavailable as exc:
            context.log.warning(f"cannot rebuild from a snapshot ({exc}): folding every "
                                "landing file")
    try:
        if seeded is not None:
            report = seeded.fold
        elif config.rebuild:
            report = refold_all()
        elif state.watermark_ms() is None and landing_gap(
                store, all_keys(), rules, lake.lake_prefix, lake.landing_prefix) is not None:
            # A new store's first fold is a refold: where the landing zone has lost the lake's
            # first hours, folding what is left would start every counter short. Seeded instead.
            rebuilt_for = "a new online store, and the landing zone lacks the lake's first hours"
            report = refold_all()
        else:  # the whole micro-batch in one atomic commit: each document and row written once
            report = fold_files(state, store, keys, rules, prefix=lake.landing_prefix,
                                files_per_commit=FILES_PER_COMMIT)
    except IncompleteSeed as exc:  # a rebuilding run died: rebuild again, then fold the rest
        rebuilt_for = str(exc)
        try:
            if exc.p is None:
                raise SeedUnavailable("it was a refold")
            seeded = seed(exc.p)
            context.log.warning(f"{exc}: seeded it again")
            report = seeded.fold
        except SeedUnavailable as why:
            context.log.warning(f"{exc} ({why}): folding every landing file")
            report = refold_all()
    except StaleLayout as exc:
        # The store has an older clicklake's table layout, or a newer one's documents (refused
        # before anything was written). Its state is derived from the lake, so upgrading (or
        # rolling back) is a rebuild, not an error: seeded again when it was seeded (its old
        # landing files may be gone), else from every landing file.
        rebuilt_for = str(exc)
        report = None
        if _was_seeded(state):
            try:
                seeded = seed(None)
                context.log.warning(f"{exc} (now, seeded again)")
                report = seeded.fold
            except SeedUnavailable as why:
                context.log.warning(f"{exc}; it cannot be seeded again ({why})")
        if report is None:
            context.log.warning(f"{exc} (now, from every landing file)")
            report = refold_all()
    if ahead:
        context.log.warning(f"{ahead} landing files are stamped more than "
                            f"{watch.AHEAD_MS // 1000} s ahead of this clock: left for a later "
                            "run (the sensor asks for them once the clock reaches them)")
    context.log.info(f"folded {report.files} files, {report.events_total} events in "
                     f"{report.seconds:.2f} s")
    if report.conflicts:
        context.log.info(f"{report.conflicts} batches were folded again: another run committed "
                         "to the online store after they read it")
    if report.missing:
        context.log.warning(f"{len(report.missing)} files were deleted before this run read "
                            f"them: {', '.join(report.missing[:5])}")
    wm = report.watermark_ms
    return dg.MaterializeResult(metadata={
        "files_folded": report.files,
        "files_skipped": report.skipped,
        "files_missing": len(report.missing),
        "fold_conflicts": report.conflicts,
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
        "seed_snapshot_hour": iso(seeded.hour_ms) if seeded is not None else "none",
        "seed_seconds": round(seeded.seconds, 3) if seeded is not None else 0.0,
        "seeded_users": seeded.users if seeded is not None else 0,
        "files_in_snapshot": seeded.files_in_snapshot if seeded is not None else 0,
        "events_in_snapshot": report.in_snapshot,
        "files_ahead_of_clock": ahead,
        # The verdicts the fold gave, as the raw layer's metadata records its own.
        "allowed_lateness_minutes": rules.allowed_lateness_ms // 60_000,
        "future_tolerance_minutes": rules.future_tolerance_ms // 60_000,
    })


def _was_seeded(state: StateStore) -> bool:
    """Whether a store this code cannot read holds a seed mark (read as far as it can be)."""
    try:
        mark = seed_mark(state)
    except Exception:  # noqa: BLE001 - an unreadable layout: as good as no mark
        return False
    return mark is not None and "p" in mark


def _lake_unsettled(context: dg.AssetExecutionContext, p: int, rules: Rules, store,
                    lake_prefix: str) -> list[str]:
    """Why the lake may hold less than the fold would, from this instance's materializations
    (partitions built elsewhere are not checked): a raw partition of the hours p - 24 h to p built
    before its landing window closed or with another allowed lateness than the fold's, or the
    snapshot of p built with inputs missing, on raw hours read early, or before a raw
    impressions or clicks partition of its last day was rebuilt."""
    lateness = rules.allowed_lateness_ms // 60_000
    hours = {hour_partition_key(h): h for h in range(p - 24 * HOUR_MS, p + HOUR_MS, HOUR_MS)}
    out, raw_built = [], 0.0

    def latest(asset: str, partitions: list[str]) -> dict[str, dg.EventLogRecord]:
        records = context.instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=partitions),
            limit=20 * len(partitions)).records
        found: dict[str, dg.EventLogRecord] = {}
        for r in records:  # newest first
            found.setdefault(r.partition_key, r)
        return found

    for stream in landing.STREAMS:
        for key, record in latest(f"raw_{stream}", list(hours)).items():
            h = hours[key]
            allowed, closes, read_at = landing_window(record, h)
            if allowed != lateness:
                out.append(f"raw_{stream} {iso(h)} allowed {allowed} min of lateness, the "
                           f"online fold {lateness}")
            elif read_at < closes:
                out.append(f"raw_{stream} {iso(h)} read its landing files before its landing "
                           "window closed")
            if stream != "predictions":  # a raw hour of the snapshot's last day rebuilt after
                raw_built = max(raw_built, record.timestamp)  # it: the chain folded the old
    snapshot = latest("user_profiles", [hour_partition_key(p)]).get(hour_partition_key(p))
    if snapshot is not None:
        meta = snapshot.asset_materialization.metadata
        missing = meta["missing_inputs"].value if "missing_inputs" in meta else "none"
        if missing != "none":
            out.append(f"user_profiles {iso(p)} was built without {missing}")
        if snapshot.timestamp < raw_built:
            out.append(f"user_profiles {iso(p)} was built before raw partitions of its last day "
                       "were rebuilt (the snapshots after them were not refolded)")
    # what the snapshot's inputs lacked: its file says (a run that died before recording it),
    # else its record
    said, early = inputs_incomplete_of(stored_footer(store, p, lake_prefix))
    if not said and snapshot is not None:
        early = incomplete_inputs(snapshot)
    if early:
        out.append(f"user_profiles {iso(p)} is folded on raw hours that read their landing "
                   f"files early ({early})")
    return out


# -- the sensor ----------------------------------------------------------------------------------


RUN_OVER = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
             dg.DagsterRunStatus.CANCELED}


def _run_over(instance: dg.DagsterInstance) -> Callable[[str], bool | str | None]:
    """Whether the sensor's run with this run key can no longer fold its files (it ended);
    `watch.QUEUED` while it waits in the run queue (never taken as dead); None when the
    instance has no such run (not launched yet, or skipped as a duplicate key: the planner
    then waits `watch.RETRY_AFTER_MS`)."""
    def over(run_key: str) -> bool | str | None:
        records = instance.get_run_records(
            dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
        if not records:
            return None
        status = records[0].dagster_run.status
        return watch.QUEUED if status == dg.DagsterRunStatus.QUEUED else status in RUN_OVER
    return over


SENSOR_NAME = "landing_to_serving"
ATTEMPT_TAG = "clicklake/attempt"  # which attempt at its files a sensor run is
ASKED_RUNS_MS = 24 * HOUR_MS  # a lost cursor is rebuilt from the sensor's runs of this long


def _asked_runs(instance: dg.DagsterInstance, now_ms: int) -> list[tuple[str, int, int, list]]:
    """(run key, request time, attempt, files) of this sensor's runs of the last
    `ASKED_RUNS_MS`, from the instance's run records (`watch.cursor_from_runs`)."""
    since = datetime.fromtimestamp((now_ms - ASKED_RUNS_MS) / 1000, UTC)
    records = instance.get_run_records(
        dg.RunsFilter(tags={"dagster/sensor_name": SENSOR_NAME}, created_after=since))
    out = []
    for r in records:
        run = r.dagster_run
        run_key = run.tags.get("dagster/run_key")
        files = (((run.run_config or {}).get("ops") or {}).get("serving_lookup") or {}).get(
            "config", {}).get("files")
        attempt = run.tags.get(ATTEMPT_TAG, "")  # none on runs of versions before the tag
        if run_key and files:
            out.append((run_key, int(r.create_timestamp.timestamp() * 1000),
                        int(attempt) if attempt.isdigit() else 1, list(files)))
    return out


def _folded(state: StateStore, watermark_ms: int | None) -> Callable[[list[str]], set[str]]:
    def folded(keys: list[str]) -> set[str]:
        if not keys or watermark_ms is None:  # nothing folded yet: no need to ask
            return set()
        return state.folded(keys)
    return folded


def _sample(keys: list[str]) -> str:
    return f"{', '.join(sorted(keys)[:5])}{' ...' if len(keys) > 5 else ''}"


@dg.sensor(name=SENSOR_NAME, asset_selection=[serving_lookup],
           minimum_interval_seconds=SENSOR_INTERVAL_S,
           default_status=dg.DefaultSensorStatus.STOPPED)
def landing_to_serving(context: dg.SensorEvaluationContext, lake: LakeResource,
                       online_store: OnlineStoreResource) -> dg.SensorResult:
    """Landing files the online store has not folded → `serving_lookup` micro-batch runs (see
    `platform.online.watch`: the store's record of folded files decides; files whose run failed
    are asked again; files visible more than the allowed lateness after their key time are
    reported, not folded)."""
    cursor, problem = watch.read_cursor(context.cursor)
    if problem:
        context.log.warning(problem)
    now_ms = int(time.time() * 1000)
    if not cursor:  # none yet, or lost: the runs asked before are in the instance's records
        asked = _asked_runs(context.instance, now_ms)
        if asked:
            context.log.info(f"no sensor cursor: {len(asked)} earlier runs of this sensor "
                             f"taken from the instance (their files wait for them or are "
                             f"asked again)")
        cursor = watch.cursor_from_runs(asked)
    state = online_store.state()
    try:
        watermark = state.watermark_ms()
        lookback = watch.lookback_ms(settings().rules().allowed_lateness_ms)
        plan = watch.plan_tick(lake.store(), _folded(state, watermark), cursor, now_ms,
                               lake.landing_prefix, MAX_FILES_PER_RUN, MAX_RUNS_IN_FLIGHT,
                               _run_over(context.instance), watermark, lookback)
    finally:
        state.close()
    if plan.late:
        context.log.warning(
            f"{len(plan.late)} landing files became visible more than {lookback // 60_000} min "
            f"after their key time (after the raw hour of that time was built): not folded "
            f"online. To take them, re-materialize their raw hours and rebuild serving_lookup: "
            f"{_sample(plan.late)}")
    if plan.retried:
        context.log.warning(f"{len(plan.retried)} files asked before are still not folded (their "
                            f"run ended without them): asked again: {_sample(plan.retried)}")
    if plan.vanished:
        context.log.warning(f"{len(plan.vanished)} files were deleted before they were folded: "
                            f"{_sample(plan.vanished)}")
    if plan.given_up:
        context.log.error(f"{len(plan.given_up)} files were asked {watch.MAX_ATTEMPTS} times and "
                          f"never folded: no longer asked (see the failed serving_lookup runs; "
                          f"a rebuild takes them): {_sample(plan.given_up)}")
    requests = [dg.RunRequest(
        run_key=run_key,
        run_config=dg.RunConfig(ops={"serving_lookup": ServingLookupConfig(files=keys)}),
        tags={"clicklake/files": str(len(keys)),
              ATTEMPT_TAG: str(plan.cursor["runs"][run_key]["n"]),
              "clicklake/first_arrival": iso(landing.parse_key(keys[0]).arrival_ms),
              "clicklake/last_arrival": iso(landing.parse_key(keys[-1]).arrival_ms)})
        for keys, run_key in zip(plan.batches, plan.run_keys, strict=True)]
    text = watch.dump_cursor(plan.cursor)
    events = _reported_files(plan)
    if not requests:
        return dg.SensorResult(skip_reason="no landing file to fold", cursor=text,
                               asset_events=events)
    return dg.SensorResult(run_requests=requests, cursor=text, asset_events=events)


def _reported_files(plan: watch.TickPlan) -> list[dg.AssetObservation]:
    """The files a tick reports and no run folds (late, given up, deleted), as an observation of
    `serving_lookup`: counted on its page in the UI beside its materializations, not only in
    the sensor's tick log."""
    found = {"late_files": plan.late, "given_up_files": plan.given_up,
             "deleted_files": plan.vanished}
    if not any(found.values()):
        return []
    metadata: dict[str, object] = {name: len(keys) for name, keys in found.items()}
    metadata.update({f"{name}_sample": dg.MetadataValue.text(_sample(keys))
                     for name, keys in found.items() if keys})
    return [dg.AssetObservation(asset_key=serving_lookup.key, metadata=metadata)]


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
    """A sample of users' online profiles equal the time-travel lookup at the same instant W
    (metadata `at`): the earlier of the end of the lake's last snapshot and the end of the last
    hour the online store holds complete (its landing window closed): files still arriving late
    for hours after W are in neither comparison."""
    online = online_store.features()
    wm = online.watermark_ms()
    lookup = LookupTable(lake.store(), lake.lake_prefix)
    hours = lookup.snapshot_hours()
    if wm is None or not len(hours):
        return dg.AssetCheckResult(passed=True, metadata={"compared_users": 0, "reason":
                                   "nothing to compare yet (no folded file or no snapshot)"})
    rules = settings().rules()
    w = comparison_instant(wm, int(hours[-1]), rules.allowed_lateness_ms)
    if w < horizon_ms(wm, rules):
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
