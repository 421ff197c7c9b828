"""Resolve a string column one distinct value at a time.

Enrichment lookups cost microseconds each, but an hour of impressions repeats the same few
thousand user agents and a few hundred thousand addresses millions of times. Dictionary-encoding
the column, resolving only its dictionary and taking the results back by index makes the cost
grow with the number of distinct values, not rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

StringValues = pa.Array | pa.ChunkedArray | Sequence[str | None]


def as_string_array(values: StringValues) -> pa.Array:
    """One Arrow array of `string` or `dictionary<string>`; anything that is not text becomes null.

    Non-text Python values (numbers, bytes, unencodable surrogates) are nulls rather than an
    exception, so a bad row degrades to "unknown" downstream instead of failing the batch.
    """
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 0:
            values = pa.array([], values.type)
        elif values.num_chunks == 1:
            values = values.chunk(0)
        elif pa.types.is_dictionary(values.type):
            try:
                values = values.unify_dictionaries().combine_chunks()
            except pa.ArrowInvalid:  # a dictionary holding a null: Arrow cannot unify it
                values = pc.dictionary_encode(
                    values.cast(values.type.value_type)).combine_chunks()
        elif pa.types.is_string(values.type):
            # Encoding first joins only the small indices, not a copy of all the text.
            values = pc.dictionary_encode(values).unify_dictionaries().combine_chunks()
        else:
            values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        try:
            values = pa.array(values, type=pa.string())
        except (pa.ArrowException, TypeError, ValueError, UnicodeEncodeError):
            values = pa.array([_text_or_none(v) for v in values], type=pa.string())
    if pa.types.is_dictionary(values.type):
        if pa.types.is_string(values.type.value_type):
            return values
        return as_string_array(values.dictionary_decode())
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        return values.cast(pa.string())
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type) \
            or pa.types.is_binary_view(values.type):
        return pa.array([_text_or_none(v) for v in values.to_pylist()], type=pa.string())
    # Null-typed (an absent column), numbers, anything else: no usable text.
    return pa.nulls(len(values), pa.string())


def is_text(value: object) -> bool:
    """True for a `str` that UTF-8 can encode (lone surrogates cannot, and the parsers reject them)."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_or_none(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if is_text(value) else None


def distinct_array(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The distinct non-null values of a string array (a `string` array), and for each row the
    index of its value.

    Null rows get index ``len(distinct)``, so a lookup array with one extra trailing "unknown"
    entry maps every row with a single `take`.
    """
    if pa.types.is_dictionary(values.type):
        encoded = values
        if values.dictionary.null_count or len(values.dictionary) != len(pc.unique(values.dictionary)):
            # A dictionary may repeat values or hold a null; re-encode so each is resolved once.
            encoded = pc.dictionary_encode(values.dictionary_decode())
    else:
        encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary
    return distinct, encoded.indices.cast(pa.int64()).fill_null(len(distinct))


def distinct_values(values: pa.Array) -> tuple[list[str], pa.Array]:
    """`distinct_array` with the distinct values as a Python list."""
    distinct, indices = distinct_array(values)
    return distinct.to_pylist(), indices


def spread(results: Sequence[Any], unknown: Any, indices: pa.Array, type: pa.DataType) -> pa.Array:
    """Per-distinct `results` (plus `unknown` for null rows) taken back out to one value per row."""
    return pa.array([*results, unknown], type=type).take(indices)
