"""The online store, free of any backend: state model, fold of landing files, reads "as of t"."""

from clicklake.platform.online.fold import (
    FoldReport,
    fold_files,
    fold_rows,
    horizon_ms,
    order_files,
    parse_file,
    purge,
)
from clicklake.platform.online.read import BeforeHorizon, OnlineFeatures
from clicklake.platform.online.sqlite_state import SqliteState
from clicklake.platform.online.state import Commit, StateStore

__all__ = [
    "BeforeHorizon",
    "Commit",
    "FoldReport",
    "OnlineFeatures",
    "SqliteState",
    "StateStore",
    "fold_files",
    "fold_rows",
    "horizon_ms",
    "order_files",
    "parse_file",
    "purge",
]
