"""The labeled hour's data checks on tiny hand-built tables: each passes on sane rows and fails
on the one defect it is about."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from depth import examples
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from clicklake.platform.features import CATEGORICAL
from clicklake.platform.labeled import labeled_schema
from clicklake.platform.labeled_quality import LABEL_RATE_MIN_ROWS, labeled_check_specs
from clicklake.platform.quality import run_checks

BOUNDS = (0.001, 0.3)


def _sane(rows: int) -> pd.DataFrame:
    data = {}
    for field in labeled_schema():
        if field.name in CATEGORICAL or field.type == "string":
            data[field.name] = [f"{field.name}-{i % 3}" for i in range(rows)]
        else:
            data[field.name] = np.full(rows, 0.5)
    data["impression_id"] = [f"i{i}" for i in range(rows)]
    data["ts"] = pd.date_range("2026-11-24", periods=rows, freq="s", tz="UTC")
    data.update(hour_of_day=np.full(rows, 7.0), day_of_week=np.full(rows, 2.0),
                label=(np.arange(rows) % 20 == 0).astype(np.int8))  # a 5 % label rate
    return pd.DataFrame(data)


def _failed(df: pd.DataFrame) -> set[str]:
    return {o.name for o in run_checks(df, labeled_check_specs(len(df), BOUNDS)) if not o.passed}


def test_sane_rows_pass_every_check():
    df = _sane(LABEL_RATE_MIN_ROWS)
    assert {o.name for o in run_checks(df, labeled_check_specs(len(df), BOUNDS))} == {
        "impression_ids_unique", "required_features_present", "feature_ranges_sane",
        "label_rate_within_bounds"}
    assert _failed(df) == set()


def test_a_user_with_more_clicks_than_impressions_in_a_window_is_sane():
    """Smoothed CTR (clicks + 0.4) / (impressions + 20) passes 1 once a window holds ~20 more
    clicks than impressions, as a click farm's 1 h window can."""
    df = _sane(50)
    df.loc[3, ["user_clicks_1h", "user_impressions_1h"]] = [30.0, 2.0]
    df.loc[3, "user_ctr_1h"] = (30 + 0.4) / (2 + 20)
    df.loc[4, "uc_ctr"] = 1.2
    assert _failed(df) == set()


@pytest.mark.parametrize(("column", "value", "check"), [
    ("user_ctr_1h", -0.01, "feature_ranges_sane"),
    ("country_ctr_24h", 1.5, "feature_ranges_sane"),
    ("pred_score", 1.01, "feature_ranges_sane"),
    ("hour_of_day", 24.0, "feature_ranges_sane"),
    ("secs_since_last_click", 0.0, "feature_ranges_sane"),
    ("user_impressions_24h", -1.0, "feature_ranges_sane"),
    ("uc_impressions", np.nan, "required_features_present"),
])
def test_one_bad_value_fails_its_check(column, value, check):
    df = _sane(50)
    df.loc[7, column] = value
    assert _failed(df) == {check}


def test_an_impression_twice_fails_uniqueness():
    df = _sane(50)
    df.loc[9, "impression_id"] = df.loc[8, "impression_id"]
    assert _failed(df) == {"impression_ids_unique"}


def test_the_label_rate_is_enforced_only_on_enough_rows():
    df = _sane(LABEL_RATE_MIN_ROWS)
    df["label"] = np.int8(0)
    assert _failed(df) == {"label_rate_within_bounds"}
    assert _failed(df.head(LABEL_RATE_MIN_ROWS - 1)) == set()


def test_check_metadata_counts_only_the_hours_it_was_enforced_in():
    """An hour with too few rows to judge is not enforced: it checked nothing (the metadata said
    200 rows and 2 hours checked where none were)."""
    from clicklake.assets.checks import HourOutcome, check_over_hours
    from clicklake.platform.quality import CheckOutcome

    passed = CheckOutcome("label_rate_in_bounds", True, "")
    skipped = [HourOutcome(0, 100, None), HourOutcome(3_600_000, 100, None)]
    meta = check_over_hours("labeled_impressions", "label_rate_in_bounds", "", skipped).metadata
    assert (meta["rows_checked"].value, meta["hours_checked"].value,
            meta["hours_not_enforced"].value) == (0, 0, 2)
    meta = check_over_hours("labeled_impressions", "label_rate_in_bounds", "",
                            [*skipped, HourOutcome(7_200_000, 900, passed)]).metadata
    assert (meta["rows_checked"].value, meta["hours_checked"].value) == (900, 1)


def test_each_failure_is_named_by_its_own_expectation_whatever_the_order():
    # GX returns results grouped by column, not in the suite's order: matched by position, the
    # between(c) failure was reported as not_null(a).
    from clicklake.platform.quality import CheckSpec

    df = pd.DataFrame({"b": [1.0, 2.0, 3.0], "a": [1, 1, 2], "c": [5, -1, 7]})
    spec = (("not_null", "b"), ("unique", "a"), ("between", "c", 0, None), ("not_null", "a"))
    for order in (spec, spec[::-1], spec[2:] + spec[:2]):
        [outcome] = run_checks(df, [CheckSpec("x", "d", order)])
        assert outcome.failures == {"unique(a)": 2, "between(c, 0, None)": 1}, order


def test_checks_sharing_an_expectation_each_report_its_failure():
    """All checks' expectations are validated as one suite: a spec two checks hold fails both,
    each with its unexpected count, and a check of passing specs passes."""
    from clicklake.platform.quality import CheckSpec

    df = pd.DataFrame({"a": [1.0, None, None], "b": [0, 1, 2]})
    shared = ("not_null", "a")
    out = run_checks(df, [CheckSpec("one", "d", (shared, ("between", "b", 0, 2))),
                          CheckSpec("two", "d", (("unique", "b"), shared)),
                          CheckSpec("three", "d", (("between", "b", 0, 1),)),
                          CheckSpec("four", "d", (("mean_between", "b", 0.5, 1.5),))])
    assert [(o.name, o.passed, o.failures) for o in out] == [
        ("one", False, {"not_null(a)": 2}), ("two", False, {"not_null(a)": 2}),
        ("three", False, {"between(b, 0, 1)": 1}), ("four", True, {})]


def test_the_checked_frame_reads_as_the_table_does():
    """Checks validate `checked_frame` (text kept in Arrow, only the columns read): a NaN
    feature and a missing id are nulls there as in a plain conversion, a repeated id is a
    duplicate, and the columns no check reads are left out."""
    import pyarrow as pa

    from clicklake.platform.quality import CheckSpec, checked_frame

    table = pa.table({"impression_id": ["a", "b", "b", None], "x": [0.5, float("nan"), 1.0, 2.0],
                      "unread": ["p", "q", "r", "s"]})
    checks = [CheckSpec("ids", "d", (("not_null", "impression_id"), ("unique", "impression_id"))),
              CheckSpec("x", "d", (("not_null", "x"), ("between", "x", 0, 1)))]
    frame = checked_frame(table, checks)
    assert list(frame.columns) == ["impression_id", "x"]
    for df in (frame, table.to_pandas()):
        assert [(o.name, o.failures) for o in run_checks(df, checks)] == [
            ("ids", {"not_null(impression_id)": 1, "unique(impression_id)": 2}),
            ("x", {"not_null(x)": 1, "between(x, 0, 1)": 1})]


@pytest.mark.parametrize("collecting", [True, False])
def test_a_validation_frees_what_it_holds_before_returning(collecting):
    """GX holds the validated frame (and its metric results) in reference cycles between its
    batch, engine and data source: freed as run_checks returns, not at a full collection hours
    later in a ranged run; the caller's setting of automatic collection is left as it was."""
    df = _sane(600)
    held = weakref.ref(df)
    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        assert not _failed(df)
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()
    del df
    assert held() is None


_TEXT = st.one_of(st.none(), st.sampled_from(["", "a", "b", "é", "a\x00", "ab"]),
                  st.text(max_size=3))


@settings(max_examples=examples(25), deadline=None)
@given(ids=st.lists(_TEXT, max_size=12), chunk=st.integers(1, 5), dictionary=st.booleans())
def test_text_checked_as_codes_fails_exactly_as_its_values(ids, chunk, dictionary):
    """Text checked only for nulls and repeats goes to GX as its dictionary codes: the same
    outcome and unexpected counts as the values themselves, over nulls, empty and non-ASCII
    text, several chunks, and a dictionary column that repeats a value in its dictionary."""
    import pyarrow as pa

    from clicklake.platform.quality import CheckSpec, checked_frame

    plain = pa.array(ids, pa.string())
    column = pa.chunked_array([plain[i:i + chunk] for i in range(0, len(ids), chunk)] or [plain],
                              pa.string())
    if dictionary and len(ids):  # every value given two codes of its own
        values = [v for v in dict.fromkeys(i for i in ids if i is not None)] * 2
        codes = [None if i is None else values.index(i) + len(values) // 2 * (n % 2)
                 for n, i in enumerate(ids)]
        column = pa.chunked_array([pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32()), pa.array(values, pa.string()))])
    table = pa.table({"id": column, "also": column, "x": pa.array(range(len(ids)), pa.int64())})
    checks = [CheckSpec("ids", "d", (("not_null", "id"), ("unique", "id"))),
              CheckSpec("also", "d", (("unique", "also"),))]
    frame = checked_frame(table, checks)
    assert list(frame.columns) == ["id", "also"]
    expected = run_checks(pd.DataFrame({"id": pd.Series(ids, dtype=object),
                                        "also": pd.Series(ids, dtype=object)}), checks)
    assert run_checks(frame, checks) == expected


_NUMBER = st.one_of(st.none(), st.sampled_from([0.0, 1.0, -0.0, 0.5, 2.0, float("inf"),
                                                 float("-inf"), float("nan")]),
                    st.floats(-3, 3))
_BOUND = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]))


@settings(max_examples=examples(40), deadline=None)
@given(values=st.lists(_NUMBER, max_size=8), ints=st.booleans(), lo=_BOUND, hi=_BOUND,
       window=st.booleans())
def test_bounds_screened_as_minimum_and_maximum_fail_exactly_as_the_values(
        values, ints, lo, hi, window):
    """A number's bounds are screened as its minimum and maximum before the per-value
    expectation: the unexpected counts are still those of the values, against a brute-force
    count, over NaN, infinities, all-null and empty columns, one bound or none, and an
    exclusive upper bound."""
    from clicklake.platform.quality import CheckSpec

    # GX refuses bounds with neither, or crossed
    assume((lo is not None or hi is not None) and (lo is None or hi is None or lo <= hi))
    if ints:
        values = [int(v) if v is not None and math.isfinite(v) else 0 for v in values]
    else:
        values = [math.nan if v is None else v for v in values]
    column = pd.Series(values, dtype=np.int64 if ints else np.float64)
    kind = "in_window" if window else "between"
    checks = [CheckSpec("bounds", "d", ((kind, "x", lo, hi),))]
    bad = sum(1 for v in column if not math.isnan(v) and (
        (lo is not None and v < lo) or (hi is not None and (v >= hi if window else v > hi))))
    [out] = run_checks(pd.DataFrame({"x": column}), checks)
    assert out.failures == ({f"{kind}(x, {lo}, {hi})": bad} if bad else {})


@pytest.mark.parametrize("column, bounds", [
    (np.array([0.7], np.float32), (0.7, None)),  # the bound rounded to float32: 0.7f < 0.7
    (np.array([0.001], np.float32), (None, 0.001)),
    (np.array([2**63 + 1], np.uint64), (0, 2**63)),  # past what a float64 minimum tells apart
    (pd.array([2**53 + 1], dtype="Int64"), (0, 2**53)),
    (pa.array([0.5, float("nan")]).to_pandas(types_mapper=pd.ArrowDtype), (0, 1)),  # no null
])
def test_bounds_are_screened_only_where_a_minimum_answers_as_the_values_do(column, bounds):
    """Outside int64, float64 and small ints, a column's minimum or maximum compared with
    GX's float bound is not what its per-value test answers: those are validated per value."""
    from clicklake.platform.quality import CheckSpec

    lo, hi = bounds
    [out] = run_checks(pd.DataFrame({"x": column}), [CheckSpec("b", "d", (("between", "x", lo, hi),))])
    assert out.failures == {f"between(x, {lo}, {hi})": 1}


def test_an_interrupt_while_collecting_leaves_collection_on(monkeypatch):
    """The collection after a validation may be interrupted (Ctrl-C, a run terminated): the
    automatic collection it paused is on again all the same."""
    from clicklake.platform import quality

    def interrupted(generation=2):
        raise KeyboardInterrupt

    assert gc.isenabled()
    monkeypatch.setattr(quality.gc, "collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _failed(_sane(10))
    monkeypatch.undo()
    assert gc.isenabled()


_KINDS = [("ExpectColumnValuesToNotBeNull", {}), ("ExpectColumnValuesToBeUnique", {}),
          ("ExpectColumnValuesToBeBetween", {"min_value": 0, "max_value": 2}),
          ("ExpectColumnValuesToBeBetween", {"min_value": 0, "max_value": 2, "strict_max": True}),
          ("ExpectColumnMinToBeBetween", {"min_value": 0}),
          ("ExpectColumnMaxToBeBetween", {"max_value": 2, "strict_max": True}),
          ("ExpectColumnMeanToBeBetween", {"min_value": 0.5, "max_value": 1.5})]


@settings(max_examples=examples(15), deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 1.0, 2.0, 2.5])), max_size=6))
def test_a_memoized_expectation_validates_as_gx_own(values):
    """The checks' expectation classes build their configuration once (`quality._memoized`):
    each validates a column exactly as GX's own class does (success and result)."""
    import great_expectations as gx

    from clicklake.platform import quality

    g = quality._gx_setup()
    df = pd.DataFrame({"x": pd.Series(values, dtype="float64")})
    for name, kwargs in _KINDS:
        ours, theirs = (cls(column="x", **kwargs)
                        for cls in (g.kinds[name], getattr(gx.expectations, name)))
        assert type(ours).__mro__[1] is type(theirs)
        assert _validate_alone(g, df, ours) == _validate_alone(g, df, theirs), (name, kwargs)


def _validate_alone(g, df: pd.DataFrame, expectation) -> tuple:
    from great_expectations.validator.v1_validator import Validator

    r = Validator(batch_definition=g.frames, batch_parameters={"dataframe": df},
                  result_format="COMPLETE").validate_expectation(expectation)
    return r.success, repr(r.result)  # as text: NaN values compare equal


def test_a_memoized_configuration_follows_a_change_of_its_expectation():
    from clicklake.platform import quality

    e = quality._gx_setup().kinds["ExpectColumnValuesToBeBetween"](column="a", min_value=0)
    assert e.configuration.kwargs["column"] == "a"
    assert e.configuration is e.configuration  # built once
    e.column, e.max_value = "b", 3
    assert (e.configuration.kwargs["column"], e.configuration.kwargs["max_value"]) == ("b", 3)
    copied = e.copy(update={"column": "c"})
    assert (copied.configuration.kwargs["column"], e.configuration.kwargs["column"]) == ("c", "b")


def test_validations_leave_nothing_behind_in_gx():
    """Every frame is validated through one data source: none is added per validation (each
    addition cost GX a save of its config), and its engine keeps no batch of the last frame."""
    from clicklake.platform import quality

    for rows in (30, 40):
        assert not _failed(_sane(rows))
    g = quality._gx_setup()
    assert [s.name for s in g.context.data_sources.all().values()] == ["clicklake-frames"]
    engine = g.frames.data_asset.datasource.get_execution_engine()
    assert not engine.batch_manager.batch_data_cache and engine.batch_manager.active_batch is None
    assert not engine._metric_cache  # per-row results among them, under the same batch id


def test_an_hour_is_written_only_once_its_checks_pass_and_as_write_parquet_writes_it(tmp_path):
    """`checked_hours` encodes each hour while the checks run: a passing hour's file is the
    one `Store.write_parquet` writes; a failing hour writes nothing and its earlier copy goes."""
    from clicklake.platform.labeled import text_columns
    from clicklake.platform.labeled_quality import checked_hours
    from clicklake.platform.storage import Store

    store = Store(str(tmp_path))
    table = pa.Table.from_pandas(_sane(600), preserve_index=False)
    [done] = checked_hours(store, [("hour.parquet", table)], BOUNDS, group_rows=1)
    store.write_parquet("plain.parquet", table, use_dictionary=text_columns(table))
    assert done.failed == [] and done.nbytes == len(store.read_bytes("hour.parquet"))
    assert store.read_bytes("hour.parquet") == store.read_bytes("plain.parquet")
    [done] = checked_hours(store, [("hour.parquet", pa.concat_tables([table, table.slice(0, 1)]))],
                           BOUNDS, group_rows=1)
    assert (done.failed, done.nbytes, store.exists("hour.parquet")) == (
        ["impression_ids_unique"], 0, False)


# -- hours checked together (`checked_hours`) ----------------------------------------------------

def _hour(n: int, rows: int, defect: str | None) -> pa.Table:
    """A sane labeled hour of its own ids, with `defect`: one that fails a check of its own, or
    one only a group would see (`shared_id`: an id of hour 0, unique within each hour)."""
    df = _sane(rows)
    df["impression_id"] = [f"h{n}-{i}" for i in range(rows)]
    if defect == "null_feature":
        df.loc[rows - 1, "uc_impressions"] = np.nan
    elif defect == "out_of_range":
        df.loc[0, "pred_score"] = 1.5
    elif defect == "id_twice":
        df.loc[1, "impression_id"] = df.loc[0, "impression_id"]
    elif defect == "shared_id":
        df.loc[0, "impression_id"] = "h0-0"
    elif defect in ("no_clicks", "rate_at_max", "rate_past_max"):
        # 0, exactly 0.3 (150 / 500: the bound is inclusive) and just past it
        clicked = {"no_clicks": 0, "rate_at_max": rows * 3 // 10,
                   "rate_past_max": rows * 3 // 10 + 1}[defect]
        df["label"] = (np.arange(rows) < clicked).astype(np.int8)
    return pa.Table.from_pandas(df, preserve_index=False)


def _alone(table: pa.Table) -> dict:
    from clicklake.platform.quality import checked_frame

    specs = labeled_check_specs(table.num_rows, BOUNDS)
    return {o.name: o for o in run_checks(checked_frame(table, specs), specs)}


@settings(max_examples=examples(20), deadline=None)
@given(st.lists(st.tuples(st.sampled_from([40, LABEL_RATE_MIN_ROWS - 1, LABEL_RATE_MIN_ROWS]),
                          st.sampled_from([None, None, None, "null_feature", "out_of_range",
                                           "id_twice", "shared_id", "no_clicks", "rate_at_max",
                                           "rate_past_max"])), min_size=1, max_size=4),
       st.sampled_from([1, LABEL_RATE_MIN_ROWS + 1, 10**9]))
@example([(LABEL_RATE_MIN_ROWS, None), (LABEL_RATE_MIN_ROWS, "rate_past_max")], 10**9)
@example([(LABEL_RATE_MIN_ROWS, "rate_at_max"), (40, "no_clicks")], 10**9)
@example([(40, None), (LABEL_RATE_MIN_ROWS, "no_clicks"), (40, "shared_id")], 10**9)
def test_hours_checked_together_get_each_hours_own_outcomes_and_files(tmp_path_factory, hours,
                                                                      group_rows):
    """Whatever the group, each hour's outcomes (pass or fail, counts, descriptions) are those
    of its own validation, and exactly the passing hours are written, as `write_parquet` writes
    them (a failing hour's earlier copy goes)."""
    from clicklake.platform.labeled import text_columns
    from clicklake.platform.labeled_quality import checked_hours
    from clicklake.platform.storage import Store

    store = Store(str(tmp_path_factory.mktemp("hours")))
    tables = [_hour(n, rows, defect) for n, (rows, defect) in enumerate(hours)]
    keys = [f"h{n}.parquet" for n in range(len(tables))]
    for key in keys:
        store.write_bytes(key, b"an earlier copy")
    done = list(checked_hours(store, zip(keys, tables), BOUNDS, group_rows))
    assert [d.key for d in done] == keys and all(
        d.table is t for d, t in zip(done, tables, strict=True))
    for d, table in zip(done, tables, strict=True):
        alone = _alone(table)
        assert d.outcomes == alone
        assert d.failed == sorted(n for n, o in alone.items() if not o.passed)
        if d.failed:
            assert d.nbytes == 0 and not store.exists(d.key)
        else:
            store.write_parquet("plain.parquet", table, use_dictionary=text_columns(table))
            assert store.read_bytes(d.key) == store.read_bytes("plain.parquet")
            assert d.nbytes == len(store.read_bytes(d.key))


def test_passing_hours_are_validated_once_a_group(monkeypatch, tmp_path):
    """Consecutive hours are validated as one frame until the group reaches `group_rows`; a
    group failing anything is validated again hour by hour."""
    from clicklake.platform import quality
    from clicklake.platform.labeled_quality import checked_hours
    from clicklake.platform.storage import Store

    validated = []

    def counting(df, checks):
        validated.append(len(df))
        return run_checks(df, checks)

    monkeypatch.setattr(quality, "run_checks", counting)
    store = Store(str(tmp_path))

    def frames_validated(defects, group_rows):
        validated.clear()
        hours = [(f"h{n}", _hour(n, 600, d)) for n, d in enumerate(defects)]
        assert len(list(checked_hours(store, hours, BOUNDS, group_rows))) == len(hours)
        return validated[:]

    assert frames_validated([None] * 3, 10**9) == [1800]
    assert frames_validated([None] * 3, 1200) == [1200, 600]
    assert frames_validated([None] * 3, 1) == [600] * 3
    assert frames_validated([None, "shared_id", None], 10**9) == [1800, 600, 600, 600]


def test_hours_given_before_a_failing_one_are_still_checked_and_written(tmp_path):
    """The asset's build raises when it refuses an hour (its snapshot refolded meanwhile): the
    hours before it, waiting in their group, are checked and written as when each hour was
    written as it came, then the error goes on."""
    from clicklake.platform.labeled_quality import checked_hours
    from clicklake.platform.storage import Store

    store = Store(str(tmp_path))

    def refused_at_the_third():
        yield "h0", _hour(0, 600, None)
        yield "h1", _hour(1, 600, "out_of_range")
        raise RuntimeError("hour 2 refused")

    done = []
    with pytest.raises(RuntimeError, match="hour 2 refused"):
        for hour in checked_hours(store, refused_at_the_third(), BOUNDS, 10**9):
            done.append((hour.key, hour.failed))
    assert done == [("h0", []), ("h1", ["feature_ranges_sane"])]
    assert store.exists("h0") and not store.exists("h1")
