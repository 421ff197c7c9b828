"""The DynamoDB online store against moto's server (real HTTP): the same fold gives exactly the
SQLite state; a crash between the transactions of one file (its updates exceed one 100-item
transaction) is finished on rerun from the stored intent, with no chunk applied twice; reads
through the DynamoDB state answer like SQLite's."""

from __future__ import annotations

import threading
import uuid

import pytest

from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files
from clicklake.platform.online.fold import order_files
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant
from clicklake.resources.online_store import DynamoDbOnlineStore, DynamoState
from tests.online_helpers import folded_in_order, generated, overtaken_fold, stale_cache_fold

START = parse_instant("2026-11-23T00:00:00Z")


@pytest.fixture(scope="module")
def landing_zone(tmp_path_factory) -> Store:
    return generated(tmp_path_factory.mktemp("landing"), START,
                     hours=1, users=30, seed=4, messy_scale=4.0)


@pytest.fixture(scope="module")
def sqlite_fold(landing_zone, tmp_path_factory) -> SqliteState:
    state = SqliteState(str(tmp_path_factory.mktemp("sqlite") / "online.db"))
    fold_files(state, landing_zone, landing_zone.list("landing/"))
    return state


def _dynamo(moto_endpoint) -> DynamoState:
    resource = DynamoDbOnlineStore(table_name=f"online-{uuid.uuid4().hex[:8]}",
                                   endpoint_url=moto_endpoint, region="us-east-1",
                                   create_table=True)
    return resource.state()


def test_dynamodb_fold_equals_sqlite_fold_and_reads_agree(moto_endpoint, landing_zone,
                                                          sqlite_fold):
    state = _dynamo(moto_endpoint)
    keys = landing_zone.list("landing/")
    report = fold_files(state, landing_zone, keys)
    assert report.files == len(keys)
    assert state.dump() == sqlite_fold.dump()
    assert state.watermark_ms() == sqlite_fold.watermark_ms()
    assert fold_files(state, landing_zone, keys).files == 0  # folded once

    a, b = OnlineFeatures(state), OnlineFeatures(sqlite_fold)
    t = START + HOUR_MS - 1
    users = sorted({d[1] for d in sqlite_fold.dump()["docs"] if d[0] == "user"})[:15]
    now = state.watermark_ms() + HOUR_MS  # after every event: the users' heads answer
    for u in users:
        assert a.profile(u, t) == b.profile(u, t)
        counters = a.profile(u, now, lists=False)
        assert counters == b.profile(u, now, lists=False)
        full = a.profile(u, now)
        assert counters["impressions_24h"] == full["impressions_24h"] > 0
        assert counters["clicks_7d"] == full["clicks_7d"]
        fa = a.feature_inputs(u, "c001", t, "8.8.8.8", None)
        fb = b.feature_inputs(u, "c001", t, "8.8.8.8", None)
        assert {k: repr(v.tolist()) for k, v in fa.items()} == {
            k: repr(v.tolist()) for k, v in fb.items()}  # repr: NaN equals NaN


def test_a_purge_scans_the_table_only_when_the_horizon_moved(moto_endpoint, landing_zone,
                                                               monkeypatch):
    """Every fold run ends with a purge, and each purge scanned the whole table six times,
    whatever it had to drop: a one-file run cost in proportion to the table's age."""
    from clicklake.platform.online.fold import purge

    state = _dynamo(moto_endpoint)
    fold_files(state, landing_zone, landing_zone.list("landing/"))
    scans = []
    real = state._scan_pages
    monkeypatch.setattr(state, "_scan_pages",
                        lambda prefix, **kw: scans.append(prefix) or real(prefix, **kw))
    wm = state.watermark_ms()
    assert purge(state, wm) == 0 and scans == []  # the fold's own purge had these bounds
    purge(state, wm + 2 * HOUR_MS)
    assert len(scans) == 6
    purge(state, wm + 2 * HOUR_MS)
    assert len(scans) == 6
    state.clear()  # a rebuild starts afresh (its own scan: every item): its first purge scans
    purge(state, wm + 2 * HOUR_MS)
    assert scans[6] is None
    del scans[6]
    assert len(scans) == 12


def test_a_throttled_transaction_is_tried_again_after_a_pause_not_taken_for_a_conflict(
        moto_endpoint, landing_zone, sqlite_fold, monkeypatch):
    """DynamoDB cancels a transaction it throttles (botocore does not retry that): it was taken
    for another writer's commit, the batch folded again 20 times without a pause, and the run
    failed saying other writers had committed."""
    from botocore.exceptions import ClientError

    from clicklake.resources import online_store

    state = _dynamo(moto_endpoint)
    real = state.client.transact_write_items
    throttled = {"left": 5, "calls": 0}

    def throttle(**kw):
        throttled["calls"] += 1
        if throttled["left"]:
            throttled["left"] -= 1
            raise ClientError({"Error": {"Code": "TransactionCanceledException"},
                               "CancellationReasons": [{"Code": "ThrottlingError"}] + [
                                   {"Code": "None"}] * (len(kw["TransactItems"]) - 1)},
                              "TransactWriteItems")
        return real(**kw)

    pauses = []
    monkeypatch.setattr(state.client, "transact_write_items", throttle)
    monkeypatch.setattr(online_store, "_pause", pauses.append)
    report = fold_files(state, landing_zone, landing_zone.list("landing/"))
    assert report.conflicts == 0 and pauses == [0, 1, 2, 3, 4]
    assert state.dump() == sqlite_fold.dump()
    other = _dynamo(moto_endpoint)  # throttled throughout: fails as such, after the pauses
    throttled["left"] = 10**6
    monkeypatch.setattr(other.client, "transact_write_items", throttle)
    calls = throttled["calls"]
    with pytest.raises(ClientError, match="TransactionCanceledException"):
        fold_files(other, landing_zone, landing_zone.list("landing/"))
    assert throttled["calls"] - calls == online_store.TRANSACT_ATTEMPTS


class _CrashAfter(Exception):
    pass


def _updates(kw: dict) -> list:
    """A chunk transaction's updates: its items but the chunk marker and the lease renewal."""
    return [item for item in kw["TransactItems"]
            if not item.get("Put", {}).get("Item", {}).get("pk", {}).get("S", "").startswith("a#")
            and item.get("Update", {}).get("Key", {}).get("pk", {}).get("S") != "meta#pending"]


def _chunk(kw: dict) -> int | None:
    """The chunk number of a commit's chunk transaction (its `a#` marker), None for others."""
    for item in kw["TransactItems"]:
        key = item.get("Put", {}).get("Item", {})
        if key.get("pk", {}).get("S", "").startswith("a#"):
            return int(key["sk"]["N"])
    return None


@pytest.mark.parametrize("writer", ["this version", "the previous version"])
def test_crash_between_transactions_of_one_file_is_finished_from_the_intent(
        moto_endpoint, landing_zone, sqlite_fold, writer):
    # The previous version's pending commit has no lease, and its chunks held one update more
    # (no lease renewal in them): made here by a writer whose transactions hold one item more.
    older = writer == "the previous version"
    state = _dynamo(moto_endpoint)
    keys = landing_zone.list("landing/")
    state.transaction_items = 11 if older else 10  # small transactions: every file needs several
    state.lease_ms = 0  # a dead writer's lease has ended when the rerun comes
    real = state.client.transact_write_items
    files_started = {"n": 0}

    def crash_after_one_chunk_of_a_later_file(**kw):
        chunk = _chunk(kw)
        if chunk is None:
            return real(**kw)  # not a chunk: the pending put with its version check
        if chunk == 0:
            files_started["n"] += 1
        if files_started["n"] >= 3 and chunk == 1:
            lost.extend(_updates(kw))
            raise _CrashAfter
        return real(**kw)

    lost: list = []  # the updates of the chunk the crash cut off
    state.client.transact_write_items = crash_after_one_chunk_of_a_later_file
    with pytest.raises(_CrashAfter):
        fold_files(state, landing_zone, keys)
    done = len(state.folded_files())
    pending = [i for i in state._scan("f#") if i["state"]["S"] == "pending"]
    assert len(pending) == 1  # the file the crash hit is half applied, recorded as pending
    assert len(state._scan("a#")) == 1  # ... with its first chunk applied
    assert done >= 2
    if older:
        state.client.update_item(TableName=state.table, Key=state._key("meta#pending"),
                                 UpdateExpression="REMOVE #o, #u, parts",
                                 ExpressionAttributeNames={"#o": "owner", "#u": "until"})

    restarted = DynamoState(state.table, moto_endpoint, "us-east-1")  # a new process
    restarted.transaction_items = 10
    resumed, real_restarted = [], restarted.client.transact_write_items

    def recording(**kw):
        if not resumed and _chunk(kw) == 1:  # (chunk 0 landed before: it is refused)
            resumed.extend(_updates(kw))
        return real_restarted(**kw)

    restarted.client.transact_write_items = recording
    report = fold_files(restarted, landing_zone, keys)
    # The rerun cut the chunks where the crashed writer did: its first chunk is the lost one.
    assert resumed == lost and lost
    assert report.files == len(keys) - done
    assert restarted.dump() == sqlite_fold.dump()
    assert restarted._scan("i#") == [] and restarted._scan("a#") == []  # intents cleaned up


@pytest.mark.parametrize("step", ["watermark", "records", "clean_up"])
def test_a_crash_after_every_chunk_landed_is_finished_on_rerun(moto_endpoint, landing_zone,
                                                               sqlite_fold, step):
    """Killed in step 3 (moving the watermark, marking the records done, deleting the intent):
    the rerun leaves the state, the watermark and an empty log exactly as an uncrashed fold."""
    state = _dynamo(moto_endpoint)
    state.lease_ms = 0  # a dead writer's lease has ended when the rerun comes
    keys = landing_zone.list("landing/")
    client = state.client
    real = {"update_item": client.update_item, "put_item": client.put_item,
            "delete_item": client.delete_item,
            "transact_write_items": client.transact_write_items}
    # (the watermark and the records are written under the commit's lease: in transactions)
    target = {"watermark": ("Update", "meta#watermark"), "records": ("Put", "f#"),
              "clean_up": ("delete_item", "a#")}[step]
    seen = {"n": 0}

    def hits(name, kw) -> bool:
        if name == "transact_write_items":
            return any(op == target[0] and (body.get("Key") or body.get("Item"))["pk"]["S"]
                       .startswith(target[1]) and (op != "Put" or
                                                   body["Item"].get("state", {}).get("S") == "done")
                       for item in kw["TransactItems"] for op, body in item.items())
        return name == target[0] and (kw.get("Key") or kw.get("Item"))["pk"]["S"].startswith(
            target[1])

    def crashing(name):
        def call(**kw):
            if hits(name, kw):
                seen["n"] += 1
                if seen["n"] == 2:  # in the second commit: the first one finished whole
                    raise _CrashAfter
            return real[name](**kw)
        return call

    for name in real:
        setattr(client, name, crashing(name))
    with pytest.raises(_CrashAfter):
        fold_files(state, landing_zone, keys, files_per_commit=4)
    for name, fn in real.items():
        setattr(client, name, fn)

    restarted = DynamoState(state.table, moto_endpoint, "us-east-1")  # a new process
    fold_files(restarted, landing_zone, keys, files_per_commit=4)
    assert restarted.dump() == sqlite_fold.dump()
    assert restarted.watermark_ms() == sqlite_fold.watermark_ms()
    assert len(restarted.folded_files()) == len(keys)
    assert restarted._scan("i#") == [] and restarted._scan("a#") == []
    assert restarted._get("meta#pending") is None


def test_a_table_of_the_older_layout_is_refused_until_rebuilt(moto_endpoint, landing_zone,
                                                               sqlite_fold):
    """A table that folded files before the layout marker existed (millisecond counter rows)
    is refused; `clear` (what a rebuild does first) lets the fold rebuild it."""
    from clicklake.platform.online.sqlite_state import StaleLayout

    state = _dynamo(moto_endpoint)
    state.client.put_item(TableName=state.table, Item={**state._key("meta#watermark"),
                                                        "wm": {"N": "1"}})
    keys = landing_zone.list("landing/")
    with pytest.raises(StaleLayout):
        fold_files(state, landing_zone, keys)
    state.clear()
    assert fold_files(state, landing_zone, keys).files == len(keys)
    assert state.dump() == sqlite_fold.dump()

    # Layout 2 kept minute logs inside the minute rows: refused as well.
    older = _dynamo(moto_endpoint)
    older.client.put_item(TableName=older.table, Item={**older._key("meta#layout"),
                                                        "v": {"N": "2"}})
    with pytest.raises(StaleLayout, match="layout 2, not 3"):
        fold_files(older, landing_zone, keys)


def test_documents_of_a_newer_layout_are_refused(moto_endpoint, landing_zone):
    from clicklake.platform.online.state import DOCS_LAYOUT, StaleLayout

    state = _dynamo(moto_endpoint)
    keys = landing_zone.list("landing/")
    fold_files(state, landing_zone, keys[:1])
    assert int(state._get("meta#docs")["v"]["N"]) == DOCS_LAYOUT
    state.check_readable()
    state.client.put_item(TableName=state.table, Item={**state._key("meta#docs"),
                                                        "v": {"N": str(DOCS_LAYOUT + 1)}})
    with pytest.raises(StaleLayout, match="newer clicklake"):
        state.check_readable()
    again = DynamoDbOnlineStore(table_name=state.table, endpoint_url=moto_endpoint,
                                region="us-east-1").state()  # a new writer, e.g. the next run
    with pytest.raises(StaleLayout, match="newer clicklake"):
        fold_files(again, landing_zone, keys)
    with pytest.raises(StaleLayout, match="newer clicklake"):  # nor one that committed before
        fold_files(state, landing_zone, keys)
    assert again.folded(keys) == {keys[0]}  # refused before anything was written


def test_a_busy_minute_log_outgrows_one_item_and_still_reads_exactly(moto_endpoint, tmp_path):
    """A minute row's log grows by ~6 bytes per event: 90 k events of one segment in one minute
    (1,500/s) is 540 KB, past DynamoDB's 400 KB per item. It is stored in parts under the
    commit's own keys, and reads, dumps and purges see one log, as SQLite's one row."""
    from clicklake.platform.online.segment_state import MINUTE_TABLE, count_before
    from clicklake.platform.online.state import Commit

    minute = START + 7 * 60_000
    offsets = [(i * 7) % 60_000 for i in range(90_000)]
    sqlite = SqliteState(str(tmp_path / "online.db"))
    dynamo = _dynamo(moto_endpoint)
    for n, part in enumerate((offsets[:50_000], offsets[50_000:])):  # two commits append
        for state in (sqlite, dynamo):
            commit = Commit()
            commit.record(f"landing/impressions/file-{n}", minute + 60_000, {"events": len(part)})
            commit.add(MINUTE_TABLE, "global|all", minute, len(part), 0,
                       "".join(f"{o:05d}," for o in part))
            assert state.commit(commit)
    [cell] = dynamo.get_cells([(MINUTE_TABLE, "global|all", minute)])
    assert cell[:2] == (90_000, 0) and len(cell[2]) == 540_000
    assert dynamo.dump() == sqlite.dump()
    for t in (0, 1, 7, 29_999, 59_999, 60_000):
        assert count_before(cell[2], t) == sum(o < t for o in offsets), t
    dynamo.purge({}, {MINUTE_TABLE: minute + 60_000})
    assert dynamo._scan("l#") == [] and dynamo.get_cells(
        [(MINUTE_TABLE, "global|all", minute)]) == [None]


def test_a_document_past_one_item_is_stored_in_parts_and_transactions_stay_under_4_mb(
        moto_endpoint, tmp_path):
    """A bot's user document holds every event of its retention window: 900 KB is past
    DynamoDB's 400 KB per item. It is stored in parts and read, shrunk, dumped and purged as
    SQLite's one row; a commit of many large documents is cut into transactions under 4 MB."""
    from clicklake.platform.online.state import Commit
    from clicklake.resources.online_store import _TRANSACTION_BYTES, _chunk_ops, _op_bytes

    sqlite = SqliteState(str(tmp_path / "online.db"))
    dynamo = _dynamo(moto_endpoint)
    big = b'{"ev":[' + b",".join(b'[%d,1,"imp-%07d"]' % (START + i, i)
                                 for i in range(40_000)) + b"]}"
    assert len(big) > 900_000
    others = {f"u{i}": b'{"ev":"' + b"x" * 350_000 + b'"}' for i in range(12)}  # 4.2 MB
    for n, docs in enumerate(({"bot": big, **others}, {"bot": b'{"ev":[]}'})):
        for state in (sqlite, dynamo):
            commit = Commit()
            commit.record(f"landing/impressions/file-{n}", START + n, {"events": 1})
            for key, value in docs.items():
                commit.put("user", key, START, value)
            if n == 0 and state is dynamo:
                ops = state._ops(commit)
                chunked = _chunk_ops(ops, state.transaction_items - 1)
                assert len(chunked) > 1 and [o for c in chunked for o in c] == ops
                assert all(sum(map(_op_bytes, c)) <= _TRANSACTION_BYTES for c in chunked)
            assert state.commit(commit)
            want = docs["bot"]
            assert state.get_docs("user", ["bot", "u3"]) == {"bot": want, "u3": others["u3"]}
        assert dynamo.dump() == sqlite.dump()
    dynamo.purge({"user": START + HOUR_MS}, {})
    assert dynamo._scan("d#") == []


def test_heads_are_written_after_their_documents(moto_endpoint):
    # A commit lands in several transactions: between two, a head must not be ahead of its
    # document (the head path would count events the document path does not have yet).
    from clicklake.platform.online.fold import HEAD, IMPRESSION, USER
    from clicklake.platform.online.state import Commit

    commit = Commit()
    commit.record("landing/f1", 0, {"stream": "impressions", "lines": 1, "events": 1,
                                    "quarantined": {}})
    commit.docs[HEAD] = {"u1": (0, b"[1]")}
    commit.docs[USER] = {"u1": (0, b"{}")}
    commit.docs[IMPRESSION] = {"i1": (0, b"{}")}
    kinds = [op[1].split("#")[1] for op in _dynamo(moto_endpoint)._ops(commit) if op[0] == "d"]
    assert kinds == [IMPRESSION, USER, HEAD]


# -- two writers on one table: a batch read before another writer's commit is folded again -----


def _two_writers(moto_endpoint) -> tuple[DynamoState, DynamoState]:
    a = _dynamo(moto_endpoint)
    return a, DynamoState(a.table, moto_endpoint, "us-east-1")


def _parts(landing_zone) -> tuple[list[str], list[str], list[str]]:
    keys = [lf.key for lf, _ in order_files(landing_zone.list("landing/"))[0]]
    assert len(keys) >= 12
    return keys[:4], keys[4:len(keys) // 2], keys[len(keys) // 2:]


@pytest.mark.parametrize("when", ["before its commit", "between its reads",
                                  "just before its intent"])
def test_a_batch_overtaken_by_another_writers_commit_is_folded_again(moto_endpoint, landing_zone,
                                                                       tmp_path, when):
    # The last strikes after the commit's recovery and folded checks: only the version check in
    # the pending put's transaction can see it.
    first, mine, theirs = _parts(landing_zone)
    a, b = _two_writers(moto_endpoint)
    overtaken_fold(a, b, landing_zone, first, mine, theirs, when, str(tmp_path / "expected.db"))


@pytest.mark.parametrize("one_file", [False, True])
def test_a_commit_another_writer_left_pending_is_finished_and_the_batch_folded_again(
        moto_endpoint, landing_zone, tmp_path, one_file):
    # The other writer dies between the transactions of its commit, after this batch read: this
    # writer's commit finishes that one from its intent first, then folds its files again from
    # a fresh read (`commit` raises Conflict). A batch of one file was reported as folded
    # before (skipped) and its file left unfolded: only bigger batches were folded again, file
    # by file.
    first, mine, theirs = _parts(landing_zone)
    mine = mine[:1] if one_file else mine
    a, b = _two_writers(moto_endpoint)
    fold_files(a, landing_zone, first, files_per_commit=len(first))
    # Their commit takes several transactions (both writers cut the same chunks, as one
    # version of clicklake does: the replay must find the chunk markers of the first attempt).
    a.transaction_items = b.transaction_items = 10
    b.lease_ms = 1000  # this writer waits for its lease to end, then takes the commit over
    real = b.client.transact_write_items

    def dies_after_one_chunk(**kw):
        if _chunk(kw) == 1:
            raise _CrashAfter
        return real(**kw)

    b.client.transact_write_items = dies_after_one_chunk
    real_commit, died = a.commit, []

    def after_theirs_died(commit):
        if not died:
            with pytest.raises(_CrashAfter):
                fold_files(b, landing_zone, theirs, files_per_commit=len(theirs))
            died.append(True)
            assert a._get("meta#pending") is not None
        return real_commit(commit)

    a.commit = after_theirs_died
    report = fold_files(a, landing_zone, mine, files_per_commit=len(mine))
    assert (report.files, report.skipped, report.conflicts) == (len(mine), 0, 1) and died
    expected = folded_in_order(landing_zone, str(tmp_path / "expected.db"), [first, theirs, mine])
    assert a.dump() == expected.dump()
    assert a._get("meta#pending") is None and a._scan("i#") == []


def test_documents_kept_from_before_another_writers_commit_are_not_reused(
        moto_endpoint, landing_zone, tmp_path):
    # A writer keeps its last commit's documents decoded for its next batch (its own commits
    # keep its token); another writer's commit in between makes them stale: read again.
    first, mine, theirs = _parts(landing_zone)
    ours = first + mine
    a, b = _two_writers(moto_endpoint)
    stale_cache_fold(a, b, landing_zone, ours, theirs, len(ours) // 2,
                     str(tmp_path / "expected.db"))


def test_a_writers_own_commits_keep_its_token(moto_endpoint, landing_zone):
    first, mine, _ = _parts(landing_zone)
    a, b = _two_writers(moto_endpoint)
    token = a.cache_token()
    fold_files(a, landing_zone, first, files_per_commit=2)
    assert a.cache_token() == token  # its decoded documents stay valid
    fold_files(b, landing_zone, mine[:1])
    assert a.cache_token() != token
    a.clear()  # a rebuild: the version is kept and moved, so no token from before matches
    assert b.cache_token() not in (token, None) and b._version() > 0


def _paused_after_first_chunk(writer: DynamoState):
    """Make `writer`'s commits stop after their first chunk until `go` is set (`paused` says it
    stopped): a writer in the middle of applying a commit."""
    paused, go, real = threading.Event(), threading.Event(), writer.client.transact_write_items

    def transact(**kw):
        out = real(**kw)
        if _chunk(kw) == 0 and not go.is_set():
            paused.set()
            assert go.wait(60)
        return out

    writer.client.transact_write_items = transact
    return paused, go


@pytest.mark.parametrize("lease_ms", [30_000, 300])
def test_a_commit_being_applied_is_waited_for_or_taken_over_and_its_writer_fenced(
        moto_endpoint, landing_zone, tmp_path, lease_ms):
    # Writer b stops in the middle of applying its commit. While its lease lasts (30 s), writer
    # a's commit waits for it: b finishes, and a folds its batch again. Once the lease has
    # ended (300 ms), a takes b's commit over and finishes it; b, resuming, is refused at its
    # next transaction (fenced) and applies nothing twice. Either way: every update once.
    first, mine, theirs = _parts(landing_zone)
    a, b = _two_writers(moto_endpoint)
    fold_files(a, landing_zone, first, files_per_commit=len(first))
    a.transaction_items = b.transaction_items = 10
    b.lease_ms = lease_ms
    paused, go = _paused_after_first_chunk(b)
    outcome: dict = {}

    def fold_theirs():
        try:
            outcome["report"] = fold_files(b, landing_zone, theirs, files_per_commit=len(theirs))
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            outcome["error"] = exc

    worker = threading.Thread(target=fold_theirs)
    worker.start()
    assert paused.wait(60)
    if lease_ms > 1000:  # b resumes while a waits for its commit
        threading.Timer(1.0, go.set).start()
    report = fold_files(a, landing_zone, mine, files_per_commit=len(mine))
    go.set()
    worker.join(60)
    assert "error" not in outcome, outcome
    if lease_ms > 1000:  # a's fold began by waiting for b's commit, which b finished
        assert (report.files, outcome["report"].files) == (len(mine), len(theirs))
    else:  # a's fold began by finishing b's commit; b was refused, then found its files folded
        assert report.files == len(theirs) + len(mine)
        assert outcome["report"].conflicts == 1 and outcome["report"].files == 0
        assert outcome["report"].skipped == len(theirs)
    expected = folded_in_order(landing_zone, str(tmp_path / "expected.db"), [first, theirs, mine])
    assert a.dump() == expected.dump()
    assert a._get("meta#pending") is None


def test_ids_and_domains_of_any_length_and_non_ascii_documents_fit_dynamodbs_limits(
        moto_endpoint, tmp_path):
    """DynamoDB refuses a partition key over 2048 bytes and an item over 400 KB. Ids and domains
    are free text of any length, and a document of non-ASCII names is several bytes a character:
    such keys are stored hashed (under their kind's prefix, with the logical key beside) and
    documents cut by bytes, so the fold, reads, dumps and purges go on as on SQLite. (A refused
    commit stayed pending: every later fold replayed it and failed.)"""
    from clicklake.platform.online import fold_rows
    from clicklake.platform.online.state import Commit
    from clicklake.resources.online_store import _MAX_PK_BYTES, _stored_pk

    sqlite = SqliteState(str(tmp_path / "online.db"))
    dynamo = _dynamo(moto_endpoint)
    long_user, long_imp = "u" + "ü" * 1500, "i" + "x" * 3000  # 3 KB each
    domain = "d" * 2100 + ".example"
    impressions = [(long_imp, START + 1_000, long_user, "c" * 1200, domain, "8.8.8.8", "ua", 0.5),
                   ("i-2", START + 2_000, "u2", "c1", None, "8.8.8.8", "ua", 0.25)]
    clicks = [("k" * 2500, START + 61_000, long_user, "c" * 1200, long_imp)]
    predictions = [("p" * 2500, START + 500, long_user, "m1", 0.3, long_imp)]
    arrival = START + 5 * 60_000
    for state in (sqlite, dynamo):
        assert fold_rows(state, "impressions", impressions, "landing/impressions/a", arrival)
        assert fold_rows(state, "clicks", clicks, "landing/clicks/b", arrival + 1)
        assert fold_rows(state, "predictions", predictions, "landing/predictions/c", arrival + 2)
        # a user document of non-ASCII names: ~600 KB of UTF-8 in 200 k characters
        commit = Commit()
        commit.record("landing/impressions/d", arrival + 3, {"events": 1})
        cjk = ('{"camps":"' + "広告" * 100_000 + '"}').encode()
        commit.put("user", "cjk", START, cjk)
        assert state.commit(commit)
        assert state.get_docs("user", ["cjk"]) == {"cjk": cjk}
    assert len(_stored_pk(f"d#user#{long_user}").encode()) < _MAX_PK_BYTES
    assert dynamo.dump() == sqlite.dump()
    a, b = OnlineFeatures(dynamo), OnlineFeatures(sqlite)
    t = START + 2 * 60_000
    assert a.profile(long_user, t) == b.profile(long_user, t) is not None
    fa = a.feature_inputs(long_user, "c" * 1200, t, "8.8.8.8", "ua", domain)
    fb = b.feature_inputs(long_user, "c" * 1200, t, "8.8.8.8", "ua", domain)
    assert {k: repr(v.tolist()) for k, v in fa.items()} == {
        k: repr(v.tolist()) for k, v in fb.items()}
    assert dynamo.marked([(START, "c:" + "k" * 2500)]) == {(START, "c:" + "k" * 2500)}
    # the same files again: recorded, so nothing is folded twice
    assert fold_rows(dynamo, "clicks", clicks, "landing/clicks/b", arrival + 1) is None
    far = START + 30 * 24 * HOUR_MS
    dynamo.purge({"user": far, "imp": far, "head": far}, {"seg_h": far, "seg_m": far}, far)
    sqlite.purge({"user": far, "imp": far, "head": far}, {"seg_h": far, "seg_m": far}, far)
    assert dynamo.dump()["docs"] == sqlite.dump()["docs"] == []


def test_a_clear_deletes_page_by_page_keys_only(moto_endpoint, landing_zone, monkeypatch):
    """A clear listed every item with its value before deleting one (about 3x the table's
    size in memory): a large table's rebuild died there, and every later run the same way."""
    state = _dynamo(moto_endpoint)
    fold_files(state, landing_zone, landing_zone.list("landing/"))
    real_scan, real_write = state.client.scan, state.client.batch_write_item
    log = []

    def scan(**kw):
        kw["Limit"] = 50  # pages of 50 items (1 MB pages on AWS)
        page = real_scan(**kw)
        log.append(("scan", len(page["Items"]), set().union(*map(set, page["Items"]))))
        return page

    def batch_write_item(**kw):
        log.append(("write", len(kw["RequestItems"][state.table]), None))
        return real_write(**kw)

    monkeypatch.setattr(state.client, "scan", scan)
    monkeypatch.setattr(state.client, "batch_write_item", batch_write_item)
    state.clear()
    monkeypatch.undo()
    scans = [e for e in log if e[0] == "scan"]
    assert len(scans) > 3 and all(attrs <= {"pk", "sk", "h"} for _, _, attrs in scans)
    assert log[1][0] == "write"  # the first page deleted before the second is read
    assert all(n <= 25 for kind, n, _ in log if kind == "write")
    left = state.client.scan(TableName=state.table)["Items"]
    assert [i["pk"]["S"] for i in left] == ["meta#version"]


def test_a_document_in_parts_is_read_whole_from_one_value(moto_endpoint, monkeypatch):
    """A commit writes a document's parts over several transactions: a read between two of
    them joined the old value's first part to the new one's others (a JSON error, a missing
    part, or a wrong answer). The read waits and reads again; parts that never agree raise."""
    from clicklake.platform.online.state import Commit
    from clicklake.resources import online_store

    monkeypatch.setattr(online_store, "_DOC_BYTES", 1_000)
    state = _dynamo(moto_endpoint)

    def commit(n: int, value: bytes) -> list[list]:
        c = Commit()
        c.record(f"landing/impressions/file-{n}", START + n, {"events": 1})
        c.put("user", "heavy", START, value)
        return state._ops(c)

    old, new = b"[" + b"1," * 1_500 + b"1]", b"[" + b"2," * 1_700 + b"2]"
    state._transact([state._write(op) for op in commit(0, old)])
    ops = commit(1, new)
    assert len(ops) == 4 and [op[0] for op in ops] == ["d", "p", "p", "p"]
    state._transact([state._write(op) for op in ops[1:]])  # the new value's later parts first
    pauses = []

    def pause(attempt):  # the commit's last transaction lands while the reader waits
        pauses.append(attempt)
        if attempt == 2:
            state._transact([state._write(ops[0])])

    monkeypatch.setattr(online_store, "_pause", pause)
    assert state.get_docs("user", ["heavy"]) == {"heavy": new} and pauses == [0, 1, 2]
    state._transact([state._write(op) for op in commit(2, old)[1:]])  # and never the first
    with pytest.raises(online_store.TornRead, match="'heavy'"):
        state.get_docs("user", ["heavy"])
    assert len(pauses) == 3 + online_store.READ_ATTEMPTS - 1  # none after the last read


class _CountingClient:
    """A boto3 client that counts the requests made through it."""

    def __init__(self, client) -> None:
        self.client, self.calls = client, []

    def __getattr__(self, name):
        method = getattr(self.client, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def test_kept_segment_rows_follow_the_tables_version(moto_endpoint, landing_zone):
    """The API's reader keeps the segment rows it read until the table's version moves: a read
    again is one key read instead of a query per range and log; another writer's commit makes
    it read them again."""
    from clicklake.platform.online.segment_state import SegmentWindows, windows_24h

    state = _dynamo(moto_endpoint)
    files = [lf.key for lf, _ in order_files(landing_zone.list("landing/"))[0]]
    fold_files(state, landing_zone, files[:len(files) // 2])
    reader = DynamoState(state.table, moto_endpoint, "us-east-1")  # as the API opens it
    counting = reader.client = _CountingClient(reader.client)
    kept = SegmentWindows(reader)
    pairs = [("global", "all"), ("campaign", "c001"), ("country", "US"), ("country", "unknown")]
    t = START + HOUR_MS - 1

    def uncached(at: int) -> list[tuple[int, int]]:
        return windows_24h(reader, pairs, at)

    before = uncached(t)
    counting.calls.clear()
    uncached(t)
    every_time = len(counting.calls)
    assert kept.windows_24h(pairs, t) == before
    assert kept.windows_24h(pairs, t - 7) == uncached(t - 7)  # the same minute, from its logs
    counting.calls.clear()
    assert kept.windows_24h(pairs, t) == before
    assert counting.calls == ["batch_get_item"], counting.calls  # the version alone
    assert every_time >= 9, every_time  # a query per range, the minute rows, their logs
    fold_files(DynamoState(state.table, moto_endpoint, "us-east-1"), landing_zone,
               files[len(files) // 2:])  # another writer
    after = uncached(t)
    assert after != before
    assert kept.windows_24h(pairs, t) == after


def test_segment_rows_read_during_a_commit_are_not_kept(moto_endpoint, landing_zone):
    """A commit's rows change between its transactions, and its writer may die between two:
    rows a reader reads meanwhile are not kept, so it never answers from a half-applied commit
    once more has landed (nor after the rerun finishes it)."""
    from clicklake.platform.online.segment_state import SegmentWindows, windows_24h

    state = _dynamo(moto_endpoint)
    files = [lf.key for lf, _ in order_files(landing_zone.list("landing/"))[0]]
    fold_files(state, landing_zone, files[:len(files) // 2])
    reader = DynamoState(state.table, moto_endpoint, "us-east-1")
    kept = SegmentWindows(reader)
    pairs = [("global", "all"), ("campaign", "c001"), ("country", "US"), ("country", "unknown")]
    t = START + HOUR_MS - 1
    assert kept.windows_24h(pairs, t) == windows_24h(reader, pairs, t)

    class Died(Exception):
        pass

    dying = DynamoState(state.table, moto_endpoint, "us-east-1")
    dying.transaction_items = 10  # the commit lands in many transactions
    dying.lease_ms = 0  # its rerun need not wait for the dead writer's lease
    real, seen = dying.client.transact_write_items, []

    def transaction(**kw):
        names = [str(op) for op in kw["TransactItems"]]
        if not seen and any("c#seg_m#global" in n for n in names):
            seen.append(kept.windows_24h(pairs, t))  # a /predict in the middle of the commit
            assert reader.read_version() is None
        elif seen:
            raise Died  # before the version moves
        return real(**kw)

    dying.client.transact_write_items = transaction
    with pytest.raises(Died):
        fold_files(dying, landing_zone, files[len(files) // 2:])
    assert seen
    for at in (t, t - 1, t - 2):  # what the dead writer landed is read, not the kept rows
        assert kept.windows_24h(pairs, at) == windows_24h(reader, pairs, at)
    fold_files(DynamoState(state.table, moto_endpoint, "us-east-1"), landing_zone,
               files[len(files) // 2:])  # the rerun finishes it
    assert reader.read_version() is not None
    assert kept.windows_24h(pairs, t) == windows_24h(reader, pairs, t)


def test_a_missing_table_is_named_with_the_fix(moto_endpoint):
    # The first read failed with "Requested resource not found", naming neither the table nor
    # what to do: in the sensor's tick, in every serving_lookup run, at the API's start.
    table = f"absent-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ValueError, match=f"DynamoDB table '{table}' does not exist .*create_table"):
        DynamoDbOnlineStore(table_name=table, endpoint_url=moto_endpoint,
                            region="us-east-1").state()
    DynamoDbOnlineStore(table_name=table, endpoint_url=moto_endpoint, region="us-east-1",
                        create_table=True).state()  # created: no error
    DynamoState(table, moto_endpoint, "us-east-1")  # and found


def test_the_region_comes_from_aws_region_as_for_every_other_service(moto_endpoint,
                                                                      monkeypatch):
    """boto3 reads only AWS_DEFAULT_REGION: with the deployment's AWS_REGION alone the online
    store failed ("You must specify a region") where the lake and SageMaker worked."""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    state = DynamoState(f"clicklake-region-{uuid.uuid4().hex[:8]}", moto_endpoint, create=True)
    assert state.client.meta.region_name == "eu-west-1"
