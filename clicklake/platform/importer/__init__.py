"""Import a user's ad log (CSV or Parquet, plain or gzip) into the Firehose landing zone."""

from clicklake.platform.importer.mapping import (
    ClicksMapping,
    Mapping,
    MappingError,
    load_mapping_dict,
    mapping_from_dict,
    merge,
)
from clicklake.platform.importer.readers import ReadError
from clicklake.platform.importer.run import ImportReport, ShiftError, default_source, import_log

__all__ = [
    "ClicksMapping",
    "ImportReport",
    "Mapping",
    "MappingError",
    "ReadError",
    "ShiftError",
    "default_source",
    "import_log",
    "load_mapping_dict",
    "mapping_from_dict",
    "merge",
]
