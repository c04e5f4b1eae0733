"""Profile imports in two rooms: `reading` parses and checks a file (CSV, JSON lines: line
numbers, limits, rejections) and `writing` stages and upserts what was read.

`services.profiles_import` is the one entry point the doors call (the admin, the API, the
`import_profiles` command); the names the services and the tests read are re-exported here.
"""

from .reading import (
    ImportRefused,
    Rejected,
    Row,
    RowBatch,
    guess_format,
    normalize_phone,
    read_rows,
)

__all__ = [
    "ImportRefused",
    "Rejected",
    "Row",
    "RowBatch",
    "guess_format",
    "normalize_phone",
    "read_rows",
]
