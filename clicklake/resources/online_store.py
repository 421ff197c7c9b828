"""The online store as a Dagster resource: SQLite (WAL) file by default, DynamoDB in production.

Both hold the same `platform.online.StateStore` contract; the fold and the reads never know which.

DynamoDB crash safety. A commit (one landing file, or a micro-batch of them) can exceed
TransactWriteItems' 100 items, so one transaction cannot hold it. Chunking alone is not enough: a
run killed between chunks would re-apply the first chunks' counter ADDs on the rerun, and the
rerun would compute its updates from a half-updated state. So a commit is a small write-ahead log,
named by its first file's key:

1. its update list (computed once, from the state before the commit) and its files' records are
   stored as intent items; then one transaction puts `meta#pending` naming it (conditional: no
   other commit pending), with this writer as its owner until a lease ends, and its first file's
   record as `pending`;
2. the list is applied in transactions of at most 98 updates + 1 conditional "chunk applied"
   marker (attribute_not_exists), so each chunk lands exactly once, + the renewal of the
   writer's lease (conditional: it still owns the commit);
3. the watermark moves, every file's record is put as `done` (the first file's last), the version
   moves (below), then the intent, the chunk markers and `meta#pending` are deleted.
Every fold starts with `recover()`: a `pending` commit is finished from its stored intent (never a
recomputed one), skipping the chunks whose marker exists; one whose marker is already `done`
(every update, record and the watermark landed) only has its clean-up finished. A pending commit
whose writer's lease has not ended is being applied: `recover()` waits for it (a lease and a
little at most, then `Conflict`). One whose lease ended is taken over (its owner changes, on the
condition that nobody moved it since), which fences its writer: if that one was only slow, its
next transaction fails on the owner and it applies nothing more.

Two folders at once. A batch reads its documents before its commit, so a commit another writer
made in between would be overwritten. Every applied commit (a replay too) adds one to
`meta#version` after its file records; a fold takes the version before it reads
(`cache_token`), and step 1's transaction also checks that the version is still that one (moved
only by this writer's own commits since): otherwise the batch is refused (`Conflict`) and the
fold reads and folds it again, as on SQLite, where one transaction holds a commit. The same token
lets a fold keep its documents decoded between its commits. The `online_fold` pool
(deploy/dagster.yaml) still runs the sensor's folds one at a time, so that they do not spend
their work on refused batches or waits.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import boto3
import dagster as dg
import orjson
from botocore.exceptions import ClientError
from pydantic import Field

from clicklake.platform.online import OnlineFeatures, SqliteState, StateStore
from clicklake.platform.online.fold import HEAD
from clicklake.platform.online.state import (
    DOCS_LAYOUT,
    Cell,
    Commit,
    Conflict,
    Fenced,
    FileRecord,
    StaleLayout,
    canonical_log,
    check_docs_layout,
    chunks,
)
from clicklake.platform.settings import settings

DEFAULT_SQLITE_PATH = "data/online/online.db"
_TRANSACTION_ITEMS = 100
_INTENT_BYTES = 300_000  # per intent item (DynamoDB items hold at most 400 KB)
_PENDING = "meta#pending"  # names the commit being applied, so any rerun finishes it first
_VERSION = "meta#version"  # commits applied so far (`v`): a batch read before one is refused
_TRANSIENT = {"ThrottlingError", "TransactionConflict", "ProvisionedThroughputExceeded",
              "RequestLimitExceeded"}  # cancellation reasons worth another try
TRANSACT_ATTEMPTS = 8  # pauses of 50 ms doubling, with jitter: about 6 s in all at most
READ_ATTEMPTS = 8  # reads of a document whose parts disagree, with `_pause` between
_PURGED = "meta#purged"  # the bounds of the last purge (`v`): the same bounds purge nothing new
# A pending commit belongs to its writer (`owner`) until `until`, which each of its transactions
# moves on; past it, the writer is taken for dead and the next commit finishes it.
_LEASE_MS = 120_000
# A minute row's event log grows with every event of the minute (~6 bytes each): one item would
# pass DynamoDB's 400 KB at ~1,100 events/s on a busy segment. So each commit puts its part of a
# log as items of its own (`l#table#pk#minute`, sk = the commit's tag + a part number), at most
# _LOG_CHARS each, and a read joins a minute's parts with one query.
_LOG_CHARS = 200_000
_LOG_PARTS = 4096  # sk = commit tag * _LOG_PARTS + part
DYNAMO_LAYOUT = 3  # 3: minute logs as items of their own (2 kept them in the minute row)
# A document past one item (a bot's user document holds every event of its retention window) is
# stored in parts: item 0 carries the part count `n`, items 1..n-1 the rest (stale parts of a
# longer earlier version are never read, and retention removes them with the document).
_DOC_BYTES = 300_000  # UTF-8 bytes: a part of non-ASCII text is cut between characters
# TransactWriteItems also caps a transaction at 4 MB: chunks stop at this many bytes of values.
_TRANSACTION_BYTES = 3_000_000
# DynamoDB refuses a partition key over 2048 bytes, and ids and domains are free text of any
# length: a longer key is stored as its kind's prefix and a hash (`_stored_pk`).
_MAX_PK_BYTES = 1536


def _stored_pk(pk: str) -> str:
    """The partition key an item of logical key `pk` is stored under: `pk` itself, or past
    _MAX_PK_BYTES its prefix (`d#ns#`, `c#table#`, `l#table#`, else up to the first `#`: scans
    by prefix still find it) and a hash of the whole. Such items also carry `pk` as `lk`."""
    if len(pk) <= _MAX_PK_BYTES // 4 or len(pk.encode()) <= _MAX_PK_BYTES:
        return pk
    cut = 2 if pk[:2] in ("d#", "c#", "l#") else 1
    prefix = "#".join(pk.split("#", cut)[:cut])
    return f"{prefix}#~{hashlib.blake2b(pk.encode(), digest_size=20).hexdigest()}"


_LK_BYTES = 65_536


def _lk(pk: str) -> str:
    """The logical key kept on a hashed item, cut to _LK_BYTES (between characters): only a
    dump reads it, and a key that long (an id of 64 KB) is shown cut there."""
    data = pk.encode()
    return pk if len(data) <= _LK_BYTES else data[:_LK_BYTES].decode(errors="ignore")


def _doc_parts(text: str) -> list[str]:
    """`text` in parts of at most _DOC_BYTES UTF-8 bytes, each cut between characters."""
    data = text.encode()
    if len(data) <= _DOC_BYTES:
        return [text]
    parts, start = [], 0
    while start < len(data):
        end = min(start + _DOC_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character: back off
            end -= 1
        parts.append(data[start:end].decode())
        start = end
    return parts


class OnlineStoreResource(dg.ConfigurableResource, ABC):
    """Where serving state lives. `state()` opens the backend; `features()` the read API."""

    @abstractmethod
    def state(self) -> StateStore: ...

    def features(self) -> OnlineFeatures:
        # the deployment's lateness: the horizon the fold purged to (`platform.settings`)
        return OnlineFeatures(self.state(), settings().rules())


def default_sqlite_path(root: str | None = None) -> str:
    """The online store's file beside a local lake root (`<root>/online/online.db`)."""
    root = root or os.environ.get("CLICKLAKE_ROOT")
    if root and not root.startswith("s3://"):
        return os.path.join(root, "online", "online.db")
    return DEFAULT_SQLITE_PATH


class SqliteOnlineStore(OnlineStoreResource):
    """One SQLite file in WAL mode (embedded default: no server, no account). When `path` is
    unset, `CLICKLAKE_ONLINE_DB` is used (read when the resource is used), then
    `online/online.db` beside the lake under a local `CLICKLAKE_ROOT`, then
    data/online/online.db."""

    path: str | None = Field(default=None, description="SQLite file of the online store.")

    def resolved_path(self) -> str:
        return self.path or os.environ.get("CLICKLAKE_ONLINE_DB") or default_sqlite_path()

    def state(self) -> StateStore:
        return SqliteState(self.resolved_path())


class DynamoDbOnlineStore(OnlineStoreResource):
    """A DynamoDB table (pk string, sk number; on-demand). Credentials: the standard boto3 chain."""

    table_name: str = Field(default="clicklake-online", description="DynamoDB table name.")
    endpoint_url: str | None = Field(default=None, description="Endpoint override (tests).")
    region: str | None = Field(default=None, description="AWS region.")
    create_table: bool = Field(default=False, description="Create the table when it is absent.")

    def state(self) -> StateStore:
        return DynamoState(self.table_name, self.endpoint_url, self.region, self.create_table)


def _n(v) -> int:
    return int(v["N"])


def _now_ms() -> int:
    return int(time.time() * 1000)


class TornRead(LookupError):
    """A document stored in parts kept changing while it was read (`DynamoState.get_docs`)."""


def _pause(attempt: int) -> None:
    """Exponential backoff with full jitter: 50 ms, 100 ms, ... doubling per attempt."""
    time.sleep(random.uniform(0, 0.05 * 2**attempt))


def _if_condition(call, **request) -> bool:
    """A conditional write: whether its condition held (False: nothing written)."""
    try:
        call(**request)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        return False
    return True


def _log_parts(log: str) -> list[str]:
    """A log cut after entries (each ends with ",") into parts of at most _LOG_CHARS."""
    parts, start = [], 0
    while start < len(log):
        end = len(log) if len(log) - start <= _LOG_CHARS else log.rindex(",", start,
                                                                           start + _LOG_CHARS) + 1
        parts.append(log[start:end])
        start = end
    return parts


def _op_bytes(op: list) -> int:
    return sum(len(v.encode()) for v in op if isinstance(v, str))


def _op_chars(op: list) -> int:
    """What intents written before `_op_bytes` measured (their replays must cut the same chunks)."""
    return sum(len(v) for v in op if isinstance(v, str))


def _chunk_ops(ops: list[list], max_items: int, max_bytes: int = _TRANSACTION_BYTES,
               measure=_op_bytes) -> list[list[list]]:
    """The commit's updates in transactions of at most `max_items` and about `max_bytes`
    (deterministic: a replay from the stored intent cuts the same chunks, with the intent's
    own `measure`)."""
    out: list[list[list]] = [[]]
    size = 0
    for op in ops:
        b = measure(op)
        if out[-1] and (len(out[-1]) >= max_items or size + b > max_bytes):
            out.append([])
            size = 0
        out[-1].append(op)
        size += b
    return out if out[-1] else []


def _commit_tag(name: str) -> int:
    """A commit's number in log item keys: stable across a replay of the same commit."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=6).digest(), "big")


class DynamoState(StateStore):
    """`StateStore` over one DynamoDB table. Items: `d#ns#key` (documents, value in `v`, hour in
    `h`; a long one in parts: count `n` on sk 0, the rest at sk 1..n-1), `c#table#pk` with sk (counters `i`, `c`), `l#table#pk#sk` with sk = commit tag and part
    (a minute row's log text one commit appended, `il` or `cl`, joined when read), `m#key` with sk
    hour (marks), `f#file` (file records), `i#file` with sk n (intent chunks), `a#file` with sk n
    (chunk applied markers), `meta#watermark`, `meta#layout`."""

    transaction_items = _TRANSACTION_ITEMS  # DynamoDB's limit; tests lower it to force chunks
    lease_ms = _LEASE_MS  # how long a pending commit is its writer's without a sign of life

    def __init__(self, table: str, endpoint_url: str | None = None, region: str | None = None,
                 create: bool = False):
        self.table = table
        # AWS_REGION as for every other service here (boto3 itself reads only the default's)
        region = region or os.environ.get("AWS_REGION") or None
        self.client = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name=region)
        self._where = f"region {region or 'from the environment'}, endpoint {endpoint_url or 'AWS'}"
        # The version this object expects (its own commits move it) and the token it gives for
        # it: unchanged by this object's commits, changed by any other writer's.
        self._seen: int | None = None
        self._token = 0
        self.owner = uuid.uuid4().hex  # this writer, in the pending commits it applies
        if create:
            self.create_table()
        else:
            self._require_table()

    def _require_table(self) -> None:
        """A clear error for a table that does not exist: the first read said only "Requested
        resource not found", naming neither the table nor the fix."""
        try:
            self.client.describe_table(TableName=self.table)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            raise ValueError(
                f"DynamoDB table {self.table!r} does not exist ({self._where}): create it "
                "(deploy/cloudformation/clicklake.yaml does) or set the online store's "
                "create_table") from None

    def create_table(self) -> None:
        try:
            self.client.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "N"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}])
            self.client.get_waiter("table_exists").wait(TableName=self.table)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise

    def _key(self, pk: str, sk: int = 0) -> dict:
        return {"pk": {"S": _stored_pk(pk)}, "sk": {"N": str(sk)}}

    def _item(self, pk: str, sk: int = 0) -> dict:
        """An item's key attributes, and its logical key `lk` when it is stored hashed (at most
        _LK_BYTES of it, beside a document part of _DOC_BYTES: under 400 KB an item)."""
        stored = _stored_pk(pk)
        key = {"pk": {"S": stored}, "sk": {"N": str(sk)}}
        return key if stored == pk else {**key, "lk": {"S": _lk(pk)}}

    def _get(self, pk: str, sk: int = 0) -> dict | None:
        return self.client.get_item(TableName=self.table, Key=self._key(pk, sk),
                                    ConsistentRead=True).get("Item")

    def _query(self, pk: str, lo: int | None = None, hi: int | None = None) -> list[dict]:
        kw = {"TableName": self.table, "ConsistentRead": True,
              "KeyConditionExpression": "pk = :p",
              "ExpressionAttributeValues": {":p": {"S": _stored_pk(pk)}}}
        if lo is not None:
            kw["KeyConditionExpression"] += " AND sk BETWEEN :lo AND :hi"
            kw["ExpressionAttributeValues"].update({":lo": {"N": str(lo)}, ":hi": {"N": str(hi)}})
        return self._pages(self.client.query, kw)

    def _scan(self, prefix: str) -> list[dict]:
        return [item for page in self._scan_pages(prefix) for item in page]

    def _scan_pages(self, prefix: str | None, keys_only: bool = False) -> Iterator[list[dict]]:
        """The items whose key starts with `prefix` (None: every item), a page at a time (1 MB
        on AWS); `keys_only`: their keys and hour (`h`) alone."""
        kw: dict = {"TableName": self.table, "ConsistentRead": True}
        if prefix is not None:
            kw.update(FilterExpression="begins_with(pk, :p)",
                      ExpressionAttributeValues={":p": {"S": prefix}})
        if keys_only:
            kw.update(ProjectionExpression="pk, sk, #h", ExpressionAttributeNames={"#h": "h"})
        return self._page_items(self.client.scan, kw)

    @classmethod
    def _pages(cls, call, kw: dict) -> list[dict]:
        """Every item of a query or scan, page after page."""
        return [item for page in cls._page_items(call, kw) for item in page]

    @staticmethod
    def _page_items(call, kw: dict) -> Iterator[list[dict]]:
        while True:
            resp = call(**kw)
            yield resp["Items"]
            if "LastEvaluatedKey" not in resp:
                return
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def _delete_pages(self, prefix: str | None, doomed, counted=lambda item: 1) -> int:
        """Delete the items under `prefix` for which `doomed(item)` holds, page by page, 25 a
        request (its keys and hour only are read: the whole table's values held at once took
        ~3x its size in memory). Returns the sum of `counted` over them."""
        n = 0
        for page in self._scan_pages(prefix, keys_only=True):
            gone = [item for item in page if doomed(item)]
            for part in chunks(gone, 25):
                self._batch_write([{"DeleteRequest": {"Key": {"pk": i["pk"], "sk": i["sk"]}}}
                                   for i in part])
            n += sum(map(counted, gone))
        return n

    # -- reads ---------------------------------------------------------------------------------
    def get_docs(self, ns: str, keys: Sequence[str]) -> dict[str, bytes]:
        """Documents stored in parts are joined only from parts of one value (the digest each
        part carries): a commit writes them over several transactions, and a read between two
        of them mixed an old value's first part with the new one's others (a JSON error, a
        missing part, or a wrong answer). Such a read waits a moment and reads again;
        `TornRead` when the parts never agree."""
        out: dict[str, bytes] = {}
        prefix = f"d#{ns}#"
        names = {_stored_pk(prefix + k): k for k in dict.fromkeys(keys)}
        todo = list(names)
        for attempt in range(READ_ATTEMPTS):
            split: list[dict] = []
            for item in self._batch_get([self._key(prefix + names[pk]) for pk in todo]):
                if "n" in item:
                    split.append(item)
                else:
                    out[names[item["pk"]["S"]]] = item["v"]["B"]
            if not split:
                return out
            rest = {(i["pk"]["S"], _n(i["sk"])): i for i in self._batch_get(
                [self._key(i["pk"]["S"], n) for i in split for n in range(1, _n(i["n"]))])}
            todo = []
            for first in split:
                pk = first["pk"]["S"]
                parts = [first, *(rest.get((pk, n)) for n in range(1, _n(first["n"])))]
                if all(p is not None and p.get("g") == first.get("g") for p in parts):
                    out[names[pk]] = b"".join(p["v"]["B"] for p in parts)
                else:
                    todo.append(pk)
            if not todo:
                return out
            if attempt < READ_ATTEMPTS - 1:  # (none after the last read)
                _pause(attempt)
        raise TornRead(f"DynamoDB table {self.table}: the parts of {names[todo[0]]!r} (and "
                       f"{len(todo) - 1} more) kept changing while read: a commit is "
                       "writing them; ask again")

    def sum_counters(self, table: str, pk: str, lo: int, hi: int) -> tuple[int, int]:
        if hi <= lo:
            return 0, 0
        items = self._query(f"c#{table}#{pk}", lo, hi - 1)
        return sum(_n(i["i"]) for i in items), sum(_n(i["c"]) for i in items)

    def _batch_get(self, keys: list[dict]) -> list[dict]:
        out: list[dict] = []
        for part in chunks(keys, 100):
            request = {self.table: {"Keys": list(part), "ConsistentRead": True}}
            attempt = 0
            while request:
                resp = self.client.batch_get_item(RequestItems=request)
                out += resp["Responses"].get(self.table, [])
                request = resp.get("UnprocessedKeys") or None
                if request:  # throttled: AWS asks for a growing pause, not a tight loop
                    _pause(min(attempt, 6))
                    attempt += 1
        return out

    def get_cells(self, cells: Sequence[tuple[str, str, int]]) -> list[Cell | None]:
        keys = list(dict.fromkeys((f"c#{t}#{pk}", sk) for t, pk, sk in cells))
        found = {(i["pk"]["S"], _n(i["sk"])): i for i in self._batch_get(
            [self._key(pk, sk) for pk, sk in keys])}
        logs = {(pk, sk): self._logs(f"l#{pk[2:]}#{sk}") for pk, sk in keys
                if (_stored_pk(pk), sk) in found}
        out: list[Cell | None] = []
        for t, pk, sk in cells:
            item = found.get((_stored_pk(f"c#{t}#{pk}"), sk))
            out.append(None if item is None else (_n(item["i"]), _n(item["c"]),
                                                  *logs[(f"c#{t}#{pk}", sk)]))
        return out

    def _logs(self, log_pk: str) -> tuple[str, str]:
        """A minute row's impression and click logs: its parts, in any order (a log is a
        multiset of entries)."""
        items = self._query(log_pk)
        return ("".join(i["il"]["S"] for i in items if "il" in i),
                "".join(i["cl"]["S"] for i in items if "cl" in i))

    def marked(self, marks: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        names = {_stored_pk("m#" + k): k for _, k in marks}
        keys = [self._key("m#" + k, h) for h, k in dict.fromkeys(marks)]
        return {(_n(i["sk"]), names[i["pk"]["S"]]) for i in self._batch_get(keys)}

    def is_folded(self, file_key: str) -> bool:
        item = self._get("f#" + file_key)
        return item is not None and item["state"]["S"] == "done"

    def watermark_ms(self) -> int | None:
        item = self._get("meta#watermark")
        return None if item is None else _n(item["wm"])

    def _version(self) -> int:
        item = self._get(_VERSION)
        return 0 if item is None else _n(item["v"])

    def read_version(self) -> object | None:
        # A commit lands in several transactions, its rows changing between them, and moves
        # the version once all of them are applied; its pending record stands from before the
        # first until after that move (and after a writer died mid-commit, until a rerun
        # finishes it). So: the version while no commit is pending, None (read every time)
        # while one is. A clear moves the version too; a purge does not, but it drops only
        # rows before what any read from the horizon on asks for (`fold.purge`). One batch
        # read, against the 5-13 round trips of a prediction's four segments (a query per
        # range, the minute rows, their logs) that a reader keeping them saves.
        items = self._batch_get([self._key(_VERSION), self._key(_PENDING)])
        found = {i["pk"]["S"]: i for i in items}
        if _stored_pk(_PENDING) in found:
            return None
        version = found.get(_stored_pk(_VERSION))
        return ("dynamodb", 0 if version is None else _n(version["v"]))

    def cache_token(self) -> object | None:
        v = self._version()
        if v != self._seen:  # another writer committed (or a first look): a new token
            self._seen, self._token = v, v
        return ("dynamodb", self._token)

    def _bump_version(self, own: bool) -> None:
        """One more applied commit. `own`: this object's commit, which keeps its token when
        the version was the one it expected (no other writer's commit came between)."""
        old = self.client.update_item(
            TableName=self.table, Key=self._key(_VERSION), UpdateExpression="ADD v :one",
            ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="UPDATED_OLD"
        ).get("Attributes")
        before = 0 if old is None else _n(old["v"])
        if own and self._seen == before:
            self._seen = before + 1

    def folded(self, file_keys: Sequence[str]) -> set[str]:
        items = self._batch_get([self._key("f#" + k) for k in dict.fromkeys(file_keys)])
        return {i["pk"]["S"][2:] for i in items if i["state"]["S"] == "done"}

    # -- the commit protocol (module docstring) ------------------------------------------------
    def _ops(self, commit: Commit) -> list[list]:
        ops: list[list] = []
        tag = _commit_tag(commit.file_key) * _LOG_PARTS
        # Heads after the documents: a commit lands in several transactions, and between them a
        # read of the head path must not see events the document does not have yet.
        for ns, docs in sorted(commit.docs.items(), key=lambda item: (item[0] == HEAD, item[0])):
            for k, (h, v) in sorted(docs.items()):
                text = None if v is None else v.decode()
                parts = None if text is None else _doc_parts(text)
                if parts is None or len(parts) == 1:
                    ops.append(["d", f"d#{ns}#{k}", h, text])
                    continue
                # Every part carries the whole value's digest: parts land in several
                # transactions, and a reader joins only parts of one value (`get_docs`).
                g = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
                ops.append(["d", f"d#{ns}#{k}", h, parts[0], len(parts), g])
                ops += [["p", f"d#{ns}#{k}", n, h, part, g] for n, part in enumerate(parts)
                        if n]
        for table, cells in sorted(commit.counters.items()):
            for (pk, sk), (di, dc, il, cl) in sorted(cells.items()):
                if di or dc or il or cl:
                    ops.append(["c", f"c#{table}#{pk}", sk, di, dc])
                    parts = [("il", p) for p in _log_parts(il)] + [("cl", p)
                                                                   for p in _log_parts(cl)]
                    if len(parts) > _LOG_PARTS:
                        raise ValueError(f"{len(parts)} log parts for {table}/{pk}/{sk}")
                    ops += [["l", f"l#{table}#{pk}#{sk}", tag + n, sk, name, part]
                            for n, (name, part) in enumerate(parts)]
        for hour, keys in sorted(commit.marks.items()):
            ops += [["m", "m#" + k, hour] for k in sorted(set(keys))]
        return ops

    def _write_intent(self, commit: Commit, checked: bool = False) -> list[list]:
        """Step 1: the intent's parts, then in one transaction `meta#pending` (naming the commit,
        this writer its owner until its lease ends) and the first file's `pending` record; with
        `checked` (the batch took `cache_token` before its reads) only while the version is
        still the one this object expects. Refused (`Conflict`) when another commit is pending
        or, checked, another writer committed after the batch read."""
        name = commit.file_key
        ops = self._ops(commit)
        body = orjson.dumps({"ops": ops, "files": [[f.key, f.arrival_ms, f.stats]
                                                   for f in commit.files], "bytes": 1})
        parts = [body[i:i + _INTENT_BYTES] for i in range(0, len(body), _INTENT_BYTES)] or [b""]
        for n, part in enumerate(parts):
            self.client.put_item(TableName=self.table,
                                 Item={**self._key("i#" + name, n), "b": {"B": part}})
        count = {"N": str(len(parts))}
        items = [
            {"Put": {"TableName": self.table, "Item": {
                **self._key(_PENDING), "id": {"S": name}, "owner": {"S": self.owner},
                "until": {"N": str(self._until())}, "parts": count},
                "ConditionExpression": "attribute_not_exists(pk)"}},
            # (a `pending` record no commit names: left by a writer cleaned up under)
            {"Put": {"TableName": self.table, "Item": {
                **self._key("f#" + name), "state": {"S": "pending"},
                "arrival": {"N": str(commit.arrival_ms)}, "parts": count},
                "ConditionExpression": "attribute_not_exists(pk) OR #s = :p",
                "ExpressionAttributeNames": {"#s": "state"},
                "ExpressionAttributeValues": {":p": {"S": "pending"}}}}]
        if checked:
            v = self._seen or 0
            items.append({"ConditionCheck": {
                "TableName": self.table, "Key": self._key(_VERSION),
                "ConditionExpression": "v = :v" if v else "attribute_not_exists(v) OR v = :v",
                "ExpressionAttributeValues": {":v": {"N": str(v)}}}})
        if commit.expect is not None:
            ns, key, value = commit.expect
            check = {"TableName": self.table, "Key": self._key(f"d#{ns}#{key}")}
            if value is None:
                check["ConditionExpression"] = "attribute_not_exists(pk)"
            else:
                check["ConditionExpression"] = "v = :v"
                check["ExpressionAttributeValues"] = {":v": {"B": value}}
            items.append({"ConditionCheck": check})
        try:
            self._transact(items)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
            if "ConditionalCheckFailed" not in reasons:
                raise  # throttled still after `_transact`'s pauses: not another writer
            if (commit.expect is not None and len(reasons) == len(items)
                    and reasons[-1] == "ConditionalCheckFailed"):
                raise Fenced(f"DynamoDB table {self.table}: {commit.expect[0]}/"
                             f"{commit.expect[1]} is no longer what the commit expects (another "
                             "run rebuilt the store, or is rebuilding it)") from exc
            raise Conflict(f"DynamoDB table {self.table}: another commit is pending, or another "
                           f"writer committed after the batch read") from exc
        return ops

    def _until(self) -> int:
        return _now_ms() + self.lease_ms

    def _transact(self, items: list[dict]) -> None:
        """TransactWriteItems, again after a pause while DynamoDB cancels it for throttling or
        a transaction conflict on an item (nothing of it applied; botocore does not retry
        these): taken for another writer's commit, a throttled batch was folded again 20 times
        without a pause, then failed as "other writers committed". Other cancellations (a
        condition that failed) and the last transient one raise as they are."""
        for attempt in range(TRANSACT_ATTEMPTS):
            try:
                self.client.transact_write_items(TransactItems=items)
                return
            except ClientError as exc:
                reasons = {r.get("Code") for r in exc.response.get("CancellationReasons") or []}
                if (exc.response["Error"]["Code"] != "TransactionCanceledException"
                        or not reasons & _TRANSIENT or reasons - _TRANSIENT - {"None", None}
                        or attempt == TRANSACT_ATTEMPTS - 1):
                    raise
            _pause(attempt)

    def _read_intent(self, name: str, parts: int | None
                     ) -> tuple[list[list], list[FileRecord], object] | None:
        """The intent's ops, files and chunk measure (its first `parts` items: a failed attempt
        of the same commit may have left more); None when they are gone (cleaned up: it was
        finished)."""
        items = sorted(self._query("i#" + name), key=lambda i: _n(i["sk"]))
        if parts is not None:
            items = items[:parts]
            if len(items) < parts:
                return None
        if not items:
            return None
        body = orjson.loads(b"".join(i["b"]["B"] for i in items))
        measure = _op_bytes if body.get("bytes") else _op_chars  # an older version's: chars
        return body["ops"], [FileRecord(k, a, st) for k, a, st in body["files"]], measure

    def _write(self, op: list) -> dict:
        if op[0] == "d":
            if op[3] is None:
                return {"Delete": {"TableName": self.table, "Key": self._key(op[1])}}
            parts = {"n": {"N": str(op[4])}} if len(op) > 4 else {}
            if len(op) > 5:  # (an intent of an older version has no digest)
                parts["g"] = {"S": op[5]}
            return {"Put": {"TableName": self.table, "Item": {
                **self._item(op[1]), "h": {"N": str(op[2])}, "v": {"B": op[3].encode()},
                **parts}}}
        if op[0] == "p":  # a later part of a document stored in parts
            digest = {"g": {"S": op[5]}} if len(op) > 5 else {}
            return {"Put": {"TableName": self.table, "Item": {
                **self._item(op[1], op[2]), "h": {"N": str(op[3])}, "v": {"B": op[4].encode()},
                **digest}}}
        if op[0] == "m":
            return {"Put": {"TableName": self.table, "Item": self._item(op[1], op[2])}}
        if op[0] == "l":  # a put under the commit's own key: replaying it changes nothing
            return {"Put": {"TableName": self.table, "Item": {
                **self._item(op[1], op[2]), "h": {"N": str(op[3])}, op[4]: {"S": op[5]}}}}
        update = {"TableName": self.table, "Key": self._key(op[1], op[2]),
                  "UpdateExpression": "ADD i :i, c :c",
                  "ExpressionAttributeValues": {":i": {"N": str(op[3])}, ":c": {"N": str(op[4])}}}
        if _stored_pk(op[1]) != op[1]:  # stored hashed: the row keeps its logical key
            update["UpdateExpression"] += " SET lk = :lk"
            update["ExpressionAttributeValues"][":lk"] = {"S": _lk(op[1])}
        return {"Update": update}

    def recover(self) -> list[FileRecord]:
        """Finish the pending commit, if any, and return its files. One whose writer's lease has
        not ended is waited for (it finishes by itself), at most a lease and a little: then
        `Conflict` (the fold tries again later). One whose lease ended is taken over (fenced:
        its writer's next transaction fails) and finished from its intent."""
        waited_until = self._until() + 5_000
        while True:
            pending = self._get(_PENDING)
            if pending is None:
                return []
            now = _now_ms()
            mine = pending.get("owner", {}).get("S") == self.owner
            if not mine and "until" in pending and _n(pending["until"]) > now:
                if now > waited_until:
                    raise Conflict(f"DynamoDB table {self.table}: commit {pending['id']['S']} "
                                   "is still being applied by another writer")
                time.sleep(0.2)
                continue
            if mine or self._take_over(pending):
                break
        name = pending["id"]["S"]
        marker = self._get("f#" + name)
        if marker is None or marker["state"]["S"] == "done":
            # None: died before its records (an older version's order), nothing applied. Done:
            # everything landed (the watermark moves before the records turn done); only the
            # clean-up was cut short, and maybe the version's move.
            if marker is not None:
                self._bump_version(own=False)
            self._clean_up(name)
            return []
        intent = self._read_intent(name, _n(pending["parts"]) if "parts" in pending else None)
        if intent is None:  # finished by its writer, whose clean-up took the intent first
            self._clean_up(name)
            return []
        ops, files, measure = intent
        self._apply(name, ops, files, own=False, fenced="parts" in pending, measure=measure)
        return files

    def _take_over(self, pending: dict) -> bool:
        """Make this writer the owner of a pending commit whose lease ended, unless another
        writer moved it first (then False: look again)."""
        values = {":me": {"S": self.owner}, ":until": {"N": str(self._until())},
                  ":id": pending["id"]}
        if "until" in pending and "owner" in pending:
            cond = "#o = :o AND #u = :u"
            values.update({":o": pending["owner"], ":u": pending["until"]})
        else:  # an older version's pending commit: no lease
            cond = "attribute_not_exists(#u)"
        return _if_condition(
            self.client.update_item, TableName=self.table, Key=self._key(_PENDING),
            UpdateExpression="SET #o = :me, #u = :until",
            ConditionExpression=f"#i = :id AND ({cond})",
            ExpressionAttributeNames={"#i": "id", "#o": "owner", "#u": "until"},
            ExpressionAttributeValues=values)

    def _check_layout(self) -> None:
        """A table that has folded files but carries no `meta#layout` of this version holds an
        older layout (millisecond counter rows): refuse to fold into it until a rebuild."""
        if getattr(self, "_layout_ok", False):
            return
        item = self._get("meta#layout")
        if item is None:
            if self._get("meta#watermark") is not None:
                raise StaleLayout(f"DynamoDB table {self.table} holds an older online state "
                                  "layout: rebuild it")
            self.client.put_item(TableName=self.table, Item={
                **self._key("meta#layout"), "v": {"N": str(DYNAMO_LAYOUT)}})
        elif _n(item["v"]) != DYNAMO_LAYOUT:
            raise StaleLayout(f"DynamoDB table {self.table} holds online state layout "
                              f"{_n(item['v'])}, not {DYNAMO_LAYOUT}: rebuild it")
        self.check_readable()
        self.client.put_item(TableName=self.table, Item={
            **self._key("meta#docs"), "v": {"N": str(DOCS_LAYOUT)}})
        self._layout_ok = True

    def check_readable(self) -> None:
        item = self._get("meta#docs")
        check_docs_layout(None if item is None else _n(item["v"]), f"DynamoDB table {self.table}")

    def commit(self, commit: Commit) -> bool:
        self._check_layout()
        self.check_readable()  # every commit: a writer of a newer layout may have come since
        if self.recover():
            # The state moved under this commit (it was computed from an older one): folded
            # again from a fresh read, as after any other writer's commit. Returning "not done"
            # counted a one-file batch as folded before, and left its file unfolded.
            raise Conflict(f"DynamoDB table {self.table}: another writer's unfinished commit "
                           "was finished first")
        if commit.expect is not None:  # first: a rebuild since may have folded its files
            ns, key, value = commit.expect  # (checked again in the intent's transaction)
            if self.get_docs(ns, [key]).get(key) != value:
                raise Fenced(f"DynamoDB table {self.table}: {ns}/{key} is no longer what the "
                             "commit expects (another run rebuilt the store, or is rebuilding it)")
        if self.folded([f.key for f in commit.files]):
            return False
        ops = self._write_intent(commit, checked=commit.read_token is not None)
        self._apply(commit.file_key, ops, commit.files, own=True, fenced=True)
        return True

    def _apply(self, name: str, ops: list[list], files: list[FileRecord], own: bool,
               fenced: bool, measure=_op_bytes) -> None:
        """Steps 2 and 3 of the protocol: each chunk once, then the file records, the
        version, and the intent's removal (`own`: this object's commit, not a replay). With
        `fenced`, each chunk's transaction also renews this writer's lease on the pending
        commit, and fails (`Conflict`) once another writer has taken it over; a commit pending
        from an older version (no lease) is finished in its own chunks, unfenced."""
        per = self.transaction_items - (2 if fenced else 1)
        lease = {"Update": {
            "TableName": self.table, "Key": self._key(_PENDING),
            "UpdateExpression": "SET #u = :until", "ConditionExpression": "#o = :me AND #i = :id",
            "ExpressionAttributeNames": {"#u": "until", "#o": "owner", "#i": "id"},
            "ExpressionAttributeValues": {":me": {"S": self.owner}, ":id": {"S": name}}}}
        for n, part in enumerate(_chunk_ops(ops, per, measure=measure)):
            applied = {"Put": {"TableName": self.table, "Item": self._key(
                "a#" + name, n), "ConditionExpression": "attribute_not_exists(pk)"}}
            items = [*(self._write(op) for op in part), applied]
            if fenced:
                lease["Update"]["ExpressionAttributeValues"][":until"] = {"N": str(self._until())}
                items.append(lease)
            try:
                self._transact(items)
            except ClientError as exc:
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
                if exc.response["Error"]["Code"] != "TransactionCanceledException" or not reasons:
                    raise
                if fenced and reasons[-1] == "ConditionalCheckFailed":
                    raise Conflict(f"DynamoDB table {self.table}: another writer took over "
                                   f"commit {name}") from exc
                if reasons[-2 if fenced else -1] == "ConditionalCheckFailed":
                    continue  # this chunk landed before (a crash, or the writer taken over)
                raise
        # The watermark first: once the commit's own marker is done, recovery only cleans up.
        # Fenced too: a clear (a rebuild) between the last chunk and these would otherwise keep
        # records of files whose events it wiped, and the rebuild would skip them.
        arrival = max(f.arrival_ms for f in files)
        watermark = {"Update": {  # forward only: a replay of an older commit leaves it
            "TableName": self.table, "Key": self._key("meta#watermark"),
            "UpdateExpression": "SET wm = :a",
            "ConditionExpression": "attribute_not_exists(wm) OR wm < :a",
            "ExpressionAttributeValues": {":a": {"N": str(arrival)}}}}
        self._write_leased([watermark], lease if fenced else None, name, forward_only=True)
        # The commit's own marker (its first file's record) turns done last.
        records = [{"Put": {"TableName": self.table, "Item": {
            **self._key("f#" + f.key), "state": {"S": "done"},
            "arrival": {"N": str(f.arrival_ms)}, "stats": {"B": orjson.dumps(f.stats)}}}}
            for f in sorted(files, key=lambda f: f.key == name)]
        for i in range(0, len(records), per):
            self._write_leased(records[i:i + per], lease if fenced else None, name)
        # Before the clean-up: a writer that sees no commit pending sees its version. (A replay
        # cut short after this adds one more: tokens only change more often.)
        self._bump_version(own)
        self._clean_up(name)

    def _write_leased(self, items: list[dict], lease: dict | None, name: str,
                      forward_only: bool = False) -> None:
        """`items` in one transaction, with `lease` (renewed) when fenced: `Conflict` once the
        commit is no longer this writer's (taken over, or cleared by a rebuild). Unfenced, each
        item on its own. `forward_only`: an item whose own condition fails is left as it is."""
        if lease is None:
            for item in items:
                (op, body), = item.items()
                call = self.client.update_item if op == "Update" else self.client.put_item
                if forward_only:
                    _if_condition(call, **body)
                else:
                    call(**body)
            return
        lease["Update"]["ExpressionAttributeValues"][":until"] = {"N": str(self._until())}
        try:
            self._transact([*items, lease])
        except ClientError as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
            if exc.response["Error"]["Code"] != "TransactionCanceledException" or not reasons:
                raise
            if reasons[-1] == "ConditionalCheckFailed":
                raise Conflict(f"DynamoDB table {self.table}: commit {name} is no longer this "
                               "writer's (taken over, or cleared by a rebuild)") from exc
            if not (forward_only and "ConditionalCheckFailed" in reasons[:-1]):
                raise

    def _clean_up(self, name: str) -> None:
        """Step 3's tail: the intent and chunk markers, then `meta#pending` if it still names
        this commit (idempotent)."""
        for prefix in ("i#", "a#"):
            for item in self._query(prefix + name):
                self.client.delete_item(TableName=self.table,
                                        Key=self._key(prefix + name, _n(item["sk"])))
        _if_condition(self.client.delete_item, TableName=self.table, Key=self._key(_PENDING),
                      ConditionExpression="#i = :id", ExpressionAttributeNames={"#i": "id"},
                      ExpressionAttributeValues={":id": {"S": name}})

    # -- maintenance ---------------------------------------------------------------------------
    def purge(self, docs_before: dict[str, int], counters_before: dict[str, int],
              marks_before: int | None = None) -> int:
        """Retention by scan: a maintenance pass (production would set TTL attributes instead).
        Only when the bounds moved since the last one (the horizon moves once an hour): each
        scan reads, and bills, the whole table, and every fold run ends with a purge."""
        bounds = orjson.dumps([sorted(docs_before.items()), sorted(counters_before.items()),
                               marks_before])
        last = self._get(_PURGED)
        if last is not None and bytes(last["v"]["B"]) == bounds:
            return 0
        n = 0
        for ns, hour in docs_before.items():  # a document's parts count as the document
            n += self._delete_pages(f"d#{ns}#", lambda i, b=hour: _n(i["h"]) < b,
                                    lambda i: _n(i["sk"]) == 0)
        for table, bound in counters_before.items():
            n += self._delete_pages(f"c#{table}#", lambda i, b=bound: _n(i["sk"]) < b)
            # the rows' log parts go with them
            self._delete_pages(f"l#{table}#", lambda i, b=bound: _n(i["h"]) < b)
        if marks_before is not None:
            n += self._delete_pages("m#", lambda i: _n(i["sk"]) < marks_before)
        # after the deletions: a purge cut short is done again
        self.client.put_item(TableName=self.table, Item={**self._key(_PURGED),
                                                         "v": {"B": bounds}})
        return n

    def folded_files(self) -> list[tuple[str, int, dict]]:
        rows = [(i["pk"]["S"][2:], _n(i["arrival"]), orjson.loads(i["stats"]["B"]))
                for i in self._scan("f#") if i["state"]["S"] == "done"]
        return sorted(rows, key=lambda r: (r[1], r[0]))

    def dump(self) -> dict:
        docs, counters = [], []
        items = self._scan("d#")
        parts = {(i["pk"]["S"], _n(i["sk"])): bytes(i["v"]["B"]) for i in items}
        for item in items:
            if _n(item["sk"]):
                continue  # a later part: joined to its document below (or a stale one)
            _, ns, key = _logical(item).split("#", 2)
            value = b"".join(parts[(item["pk"]["S"], n)]
                             for n in range(_n(item["n"]) if "n" in item else 1))
            docs.append((ns, key, _n(item["h"]), value))
        logs: dict[tuple[str, int], list[str]] = {}
        for item in self._scan("l#"):
            key = ("c" + _logical(item)[1:].rsplit("#", 1)[0], _n(item["h"]))
            cell = logs.setdefault(key, ["", ""])
            cell[0] += item.get("il", {}).get("S", "")
            cell[1] += item.get("cl", {}).get("S", "")
        for item in self._scan("c#"):
            _, table, pk = _logical(item).split("#", 2)
            il, cl = logs.get((_logical(item), _n(item["sk"])), ("", ""))
            row = (table, pk, _n(item["sk"]), _n(item["i"]), _n(item["c"]),
                   canonical_log(il), canonical_log(cl))
            if any(row[3:]):
                counters.append(row)
        marks = [(_n(i["sk"]), _logical(i)[2:]) for i in self._scan("m#")]
        files = [(i["pk"]["S"][2:], _n(i["arrival"]), bytes(i["stats"]["B"]))
                 for i in self._scan("f#") if i["state"]["S"] == "done"]
        return {"docs": sorted(docs), "counters": sorted(counters), "marks": sorted(marks),
                "files": sorted(files)}

    def clear(self, keep: tuple[str, str, int, bytes] | None = None) -> None:
        self._layout_ok = False
        kept = {_VERSION}  # kept and moved: a token from before never matches
        if keep is not None:  # written first, and moved: no commit read before it lands
            ns, key, hour, value = keep
            self._transact([
                self._write(["d", f"d#{ns}#{key}", hour, value.decode()]),
                {"Update": {"TableName": self.table, "Key": self._key(_VERSION),
                            "UpdateExpression": "ADD v :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}}}}])
            kept.add(_stored_pk(f"d#{ns}#{key}"))
        # Before the scan: a commit still being applied by another run fails its next chunk
        # (the chunks renew a lease on this item), so none lands after the scan passed by.
        self.client.delete_item(TableName=self.table, Key=self._key(_PENDING))
        # page by page (a large table's rebuild died holding it whole, and every later run
        # the same way)
        self._delete_pages(None, lambda item: item["pk"]["S"] not in kept)
        self._bump_version(own=False)

    def _batch_write(self, requests: list[dict]) -> None:
        """BatchWriteItem of up to 25 requests, the unprocessed ones again after a pause."""
        attempt = 0
        while requests:
            resp = self.client.batch_write_item(RequestItems={self.table: requests})
            requests = resp.get("UnprocessedItems", {}).get(self.table, [])
            if requests:
                _pause(min(attempt, 6))
                attempt += 1


def _logical(item: dict) -> str:
    """The logical key of a stored item (`lk` when its key is stored hashed)."""
    return item.get("lk", item["pk"])["S"]
