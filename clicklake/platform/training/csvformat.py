"""SageMaker built-in XGBoost CSV: label in column 0, no header, numeric only.

Missing values are written as EMPTY fields. In File mode the built-in XGBoost container loads a
CSV channel with XGBoost's own text parser (`DMatrix("<dir>?format=csv&label_column=0")`), and
that parser skips an empty field: the value is absent, i.e. missing, exactly like NaN in an
in-memory DMatrix. (`tests/test_training_csv.py` checks this against XGBoost's parser.) Use File
mode: Pipe mode goes through a different reader. A sentinel such as -999 would instead become a
real value the trees split on.

Beware one quirk of that parser: it infers the column count from the widest row, so a feature that
is missing in every row of a file shortens the matrix. `write_sagemaker_csv` cannot prevent it;
`read_sagemaker_csv` takes the manifest's width to stay exact.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CONTENT_TYPE = "text/csv"

# Anything a channel file can be handed over as: raw bytes, a local path or an open binary file.
CsvSource = bytes | str | os.PathLike | BinaryIO


def _batch_table(labels: np.ndarray, features: np.ndarray) -> pa.Table:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D, got shape {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} feature rows")
    if np.isnan(y).any():
        raise ValueError("labels must not be missing")
    if np.isinf(x).any() or np.isinf(y).any():
        raise ValueError("infinite values cannot be written: XGBoost's CSV reader has no inf")
    # from_pandas=True turns NaN into null, which pyarrow writes as an empty field.
    cols = [pa.array(y)] + [pa.array(x[:, j], from_pandas=True) for j in range(x.shape[1])]
    return pa.Table.from_arrays(cols, names=[str(i) for i in range(len(cols))])


def write_sagemaker_csv(batches: Iterable[tuple[np.ndarray, np.ndarray]], out: BinaryIO) -> int:
    """Stream (labels, features) batches to `out` as SageMaker CSV; returns the rows written.

    Floats are written in their shortest round-trip form, so reading back gives the same float64.
    Memory holds one batch at a time. Every batch must have the same number of features.
    """
    options = pacsv.WriteOptions(include_header=False, delimiter=",", quoting_style="none")
    rows, width = 0, None
    for labels, features in batches:
        table = _batch_table(labels, features)
        if width is None:
            width = table.num_columns
        elif table.num_columns != width:
            raise ValueError(f"batch has {table.num_columns - 1} features, expected {width - 1}")
        if table.num_rows == 0:
            continue
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, write_options=options)
        out.write(buf.getvalue())
        rows += table.num_rows
    return rows


def to_csv_bytes(labels: np.ndarray, features: np.ndarray) -> bytes:
    """One batch as SageMaker CSV bytes (a convenience for small data and tests)."""
    buf = io.BytesIO()
    write_sagemaker_csv([(labels, features)], buf)
    return buf.getvalue()


def features_to_csv(features: np.ndarray) -> bytes:
    """Rows to score as the built-in XGBoost endpoint expects them: CSV without a label column."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    table = pa.Table.from_arrays(
        [pa.array(x[:, j], from_pandas=True) for j in range(x.shape[1])],
        names=[str(j) for j in range(x.shape[1])],
    )
    buf = io.BytesIO()
    options = pacsv.WriteOptions(include_header=False, delimiter=",", quoting_style="none")
    pacsv.write_csv(table, buf, write_options=options)
    return buf.getvalue()


def _open(source: CsvSource) -> BinaryIO:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    if isinstance(source, str | os.PathLike):
        return open(source, "rb")
    return source


def read_sagemaker_csv(
    sources: CsvSource | list[CsvSource], n_features: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read SageMaker CSV files into (labels float32, features float32 with NaN for missing).

    Several sources are concatenated in order, as SageMaker does with the files of a channel.
    `n_features` pins the width (from the manifest); rows are padded with NaN to it.
    """
    if not isinstance(sources, list):
        sources = [sources]
    ys, xs = [], []
    for source in sources:
        f = _open(source)
        try:
            data = f.read()
        finally:
            if f is not source:
                f.close()
        if not data.strip():
            continue
        y, x = _parse_csv(data)
        ys.append(y)
        xs.append(x)
    width = max([x.shape[1] for x in xs] + [n_features or 0])
    if n_features is not None and width > n_features:
        raise ValueError(f"CSV has {width} features, manifest says {n_features}")
    if not xs:
        return np.empty(0, np.float32), np.empty((0, width), np.float32)
    xs = [_pad(x, width) for x in xs]
    return np.concatenate(ys), np.concatenate(xs)


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[1] == width:
        return x
    out = np.full((x.shape[0], width), np.nan, dtype=np.float32)
    out[:, : x.shape[1]] = x
    return out


def _parse_csv(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    first = data[: data.find(b"\n") if b"\n" in data else len(data)]
    n_cols = first.count(b",") + 1
    convert = pacsv.ConvertOptions(
        column_types={str(i): pa.float64() for i in range(n_cols)},
        strings_can_be_null=True,
    )
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(
            column_names=[str(i) for i in range(n_cols)], block_size=1 << 24
        ),
        convert_options=convert,
    )
    y = table.column(0).to_numpy().astype(np.float32)
    if np.isnan(y).any():
        raise ValueError("a row has no label in column 0")
    x = np.empty((table.num_rows, n_cols - 1), dtype=np.float32)
    for j in range(1, n_cols):
        x[:, j - 1] = table.column(j).to_numpy(zero_copy_only=False)
    return y, x
