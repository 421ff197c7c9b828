"""Data checks with Great Expectations 1.x, run directly (dagster-ge does not support GX 1.x).

A check is a named list of expectations over one DataFrame. Specs are plain tuples so this module
imports nothing heavy at import time; GX itself (seconds to import) is loaded on first use.
"""

from __future__ import annotations

import gc
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# ("not_null", column) | ("unique", column) | ("between", column, min, max) (inclusive; None =
# unbounded) | ("in_window", column, start, end) (start <= value < end) |
# ("mean_between", column, min, max)
ExpectationSpec = tuple


@dataclass(frozen=True)
class CheckSpec:
    name: str
    description: str
    expectations: tuple[ExpectationSpec, ...]


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    description: str
    failures: dict[str, int] = field(default_factory=dict)  # expectation -> unexpected count


_lock = threading.Lock()
_gx = None


class _Gx:
    """What the checks use of GX, set up once a process (under `_lock`): an ephemeral context
    with one pandas data source, data asset and batch definition that every frame is validated
    through (adding and deleting them per validation cost GX a save of its project config as
    YAML each, four a validation), and the expectation classes (`_memoized`)."""

    KINDS = ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeUnique",
             "ExpectColumnValuesToBeBetween", "ExpectColumnMinToBeBetween",
             "ExpectColumnMaxToBeBetween", "ExpectColumnMeanToBeBetween")

    def __init__(self):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.frames = self.context.data_sources.add_pandas("clicklake-frames").add_dataframe_asset(
            "frame").add_batch_definition_whole_dataframe("whole")
        self.kinds = {name: _memoized(getattr(gx.expectations, name)) for name in self.KINDS}


def _gx_setup() -> _Gx:
    global _gx
    if _gx is None:  # checked again under the lock; once set, read without it (run_checks holds it)
        with _lock:
            if _gx is None:
                _gx = _Gx()
    return _gx


def _memoized(base: type) -> type:
    """`base` with its `configuration` built once per instance, again after an attribute is set
    or in a copy (a new `__dict__`). GX builds it again (a pydantic dict of the model, a regex
    over the class name) at every look-up of a keyword, ~70 times per expectation per
    validation: a third of a labeled hour's checking. For the checks' own expectations only,
    which nothing changes in place (a value inside a field, e.g. `meta`, changed in place is
    not seen). Registered with GX under its own name (`clicklake_expect_...`); validated
    exactly as `base` (same keys, metrics and result)."""
    from great_expectations.compatibility.pydantic import PrivateAttr

    def configuration(self):
        memo = self._configuration_memo
        if memo is None or memo[0] is not self.__dict__:  # none yet, or a copy's
            memo = self._configuration_memo = (self.__dict__, base.configuration.fget(self))
        return memo[1]

    def __setattr__(self, name, value):
        base.__setattr__(self, name, value)
        if name != "_configuration_memo":
            base.__setattr__(self, "_configuration_memo", None)

    return type(f"Clicklake{base.__name__}", (base,), {
        "__module__": __name__, "__annotations__": {},
        "_configuration_memo": PrivateAttr(default=None),
        "configuration": property(configuration), "__setattr__": __setattr__})


def _expectation(spec: ExpectationSpec, tag: int = 0):
    """The GX expectation of `spec`, carrying its label and `tag` in `meta`: GX returns results
    grouped by column, not in the suite's order, so each result is matched to its spec by the
    tag (a spec may be in two checks)."""
    kinds = _gx_setup().kinds
    kind, _, *args = spec
    common = _common(spec, tag)
    if kind == "not_null":
        return kinds["ExpectColumnValuesToNotBeNull"](**common)
    if kind == "unique":
        return kinds["ExpectColumnValuesToBeUnique"](**common)
    if kind == "between":
        lo, hi = args
        return kinds["ExpectColumnValuesToBeBetween"](**common, min_value=lo, max_value=hi)
    if kind == "in_window":
        lo, hi = args
        return kinds["ExpectColumnValuesToBeBetween"](
            **common, min_value=lo, max_value=hi, strict_max=True
        )
    if kind == "mean_between":
        lo, hi = args
        return kinds["ExpectColumnMeanToBeBetween"](**common, min_value=lo, max_value=hi)
    raise ValueError(f"unknown expectation kind {kind!r}")


def _screening(spec: ExpectationSpec, tag: int, df: pd.DataFrame) -> list:
    """Expectations that pass exactly when `spec` does, cheaper to validate: a number column's
    bounds as its minimum and maximum (an aggregate; a map expectation filters the whole frame
    of its column's nulls first), where `spec` itself is validated only if they fail (an
    all-null column has no minimum: its bounds then fail here and are settled by `spec`)."""
    kind, column, *args = spec
    # Only where a minimum or maximum compares with GX's (float) bound as its per-value test
    # does: int64 and float64, compared vectorised by both, and ints every float64 holds. Not
    # float32 (the bound rounded to the column's precision), uint64 or pandas' nullable and
    # Arrow types (their values compared one by one as Python numbers; an Arrow NaN is no null).
    dtype = getattr(df[column], "dtype", None) if column in df.columns else None
    if kind not in ("between", "in_window") or not isinstance(dtype, np.dtype) or not (
            dtype in (np.dtype(np.int64), np.dtype(np.float64))
            or (dtype.kind in "iu" and dtype.itemsize <= 4)):
        return [_expectation(spec, tag)]
    lo, hi = args
    common, kinds = _common(spec, tag), _gx_setup().kinds
    screens = []
    if lo is not None:
        screens.append(kinds["ExpectColumnMinToBeBetween"](**common, min_value=lo))
    if hi is not None:
        screens.append(kinds["ExpectColumnMaxToBeBetween"](
            **common, max_value=hi, strict_max=kind == "in_window"))
    return screens or [_expectation(spec, tag)]


_META = "clicklake_check"
_TAG = "clicklake_spec"


def _common(spec: ExpectationSpec, tag: int) -> dict:
    """The arguments every expectation of `spec` takes: its column, its label and tag in `meta`."""
    return {"column": spec[1], "meta": {_META: _label(spec), _TAG: tag}}


def _label(spec: ExpectationSpec) -> str:
    kind, column, *args = spec
    return f"{kind}({column}{''.join(', ' + str(a) for a in args)})"


# What a text column's dictionary codes answer as its values would: the same nulls, and equal
# codes exactly where the values are equal.
_CODES_ANSWER = {"not_null", "unique"}


def checked_frame(table, checks: list[CheckSpec]) -> pd.DataFrame:
    """The DataFrame `checks` validate, from an Arrow table: only the columns they read; a text
    column only checked for nulls and repeats as its dictionary codes (same nulls, same
    equalities: GX hashes every frame it is given twice, and 50 k distinct ids' text was a
    sixth of a labeled hour's checking); other text kept in Arrow (a pandas ArrowDtype column:
    no Python string per value); numbers as NumPy (so NaN counts as null, as GX reads a float
    column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kinds: dict[str, set[str]] = {}
    for check in checks:
        for kind, column, *_ in check.expectations:
            kinds.setdefault(column, set()).add(kind)
    names = [n for n in table.column_names if n in kinds]
    columns = []
    for name in names:
        column = table[name]
        if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type):
            column = column.cast(column.type.value_type)  # its dictionary may repeat a value
        if kinds[name] <= _CODES_ANSWER and _is_text(column.type):
            # large_string: one chunk of more than 2 GiB of text would overflow string offsets
            column = pc.dictionary_encode(column.cast(pa.large_string()).combine_chunks()).indices
        columns.append(column)
    return pa.table(columns, names=names).to_pandas(
        types_mapper=lambda t: pd.ArrowDtype(t) if (
            _is_text(t) or pa.types.is_dictionary(t)) else None)


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


@contextmanager
def _cycles_freed_after():
    """GX's batch, engine and data source refer to each other, as do the metric results it
    keeps (a condition Series per expectation), so a validation leaves its frame and results
    to the cyclic garbage collector; and it allocates enough to get them promoted to the oldest
    generation on the way, where they waited for a full collection: in a ranged run, tens of
    hours' worth (~8 MiB an hour, and the frame's columns). Automatic collection is paused
    during the validation, so everything it made is still young after it, and the young
    generation is collected then (a few milliseconds)."""
    enabled = gc.isenabled()
    try:  # an interrupt anywhere in here still leaves collection as the caller had it
        gc.disable()
        yield
    finally:
        try:
            gc.collect(0)
        finally:
            if enabled:
                gc.enable()


def run_checks(df: pd.DataFrame, checks: list[CheckSpec]) -> list[CheckOutcome]:
    """Validate `df` against every check's expectations in one GX suite, pass or fail only
    (GX's fixed cost per expectation and per validation is most of an hour's checking: a
    ValidationDefinition per check, each computing every unexpected count, took 2.3x as long),
    a number's bounds screened as its minimum and maximum (`_screening`); the expectations that
    failed are validated again, as themselves, for their unexpected counts."""
    tagged = [(i, spec) for i, check in enumerate(checks) for spec in check.expectations]
    failures: list[dict[str, int]] = [{} for _ in checks]
    g = _gx_setup()
    # One data source serves every validation, and GX registries are not thread-safe.
    with _lock, _cycles_freed_after():
        for (i, spec), observed in _failed_counts(g, df, tagged):
            failures[i][_label(spec)] = observed
    return [CheckOutcome(check.name, not failures[i], check.description, failures[i])
            for i, check in enumerate(checks)]


def _failed_counts(g: _Gx, df: pd.DataFrame, tagged: list) -> list:
    """(tagged spec, unexpected count or observed value) of each expectation `df` fails. Its
    own function so GX's validator is no longer referenced once it returns (the collection
    after it frees it with the rest)."""
    import great_expectations as gx
    from great_expectations.validator.v1_validator import Validator

    # One validator, so one batch for both validations below: GX fingerprints the whole frame
    # each time it makes a batch of it (`Batch.validate` made a second one).
    validator = Validator(batch_definition=g.frames, batch_parameters={"dataframe": df})
    engine = g.frames.data_asset.datasource.get_execution_engine()

    def failed(specs: list[tuple[int, ExpectationSpec]], result_format: str,
               screen: bool = False) -> list:
        if not specs:
            return []
        suite = gx.ExpectationSuite(name=f"checks-{uuid.uuid4().hex}", expectations=[
            e for n, (_, spec) in enumerate(specs)
            for e in (_screening(spec, n, df) if screen else [_expectation(spec, n)])])
        validator.result_format = result_format
        result = validator.validate_expectation_suite(suite)
        first: dict = {}  # by spec: a spec screened by two expectations fails once
        for r in result.results:
            if not r.success:
                first.setdefault(r.expectation_config.meta[_TAG], r)
        return [(specs[tag], r) for tag, r in first.items()]

    try:
        # pass or fail of every spec (screened), then the unexpected counts of those failed
        again = [spec for spec, _ in failed(tagged, "BOOLEAN_ONLY", screen=True)]
        counts = []
        for spec, res in failed(again, "BASIC"):
            observed = res.result.get("unexpected_count")
            if observed is None:  # aggregate expectations report a value instead
                observed = res.result.get("observed_value")
            counts.append((spec, observed if observed is not None else 0))
        return counts
    finally:
        # The shared data source's engine keeps the last batch it loaded, and every metric it
        # computed (per-row Series among them) keyed by the batch's id, the same for every
        # frame: neither outlives the frame, and no frame's metrics are another's.
        engine.batch_manager.reset_batch_cache()
        engine.batch_manager.batch_data_cache.clear()
        engine._metric_cache.clear()
