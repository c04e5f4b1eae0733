"""Reading a sink's record file: one JSON line per attempt, from any process."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """Every attempt recorded so far (a line still being written is left for next time)."""
    records = []
    try:
        with Path(path).open(encoding="utf-8") as file:
            for line in file:
                if line.endswith("\n"):
                    records.append(json.loads(line))
    except FileNotFoundError:
        pass
    return records


def count_duplicates(records: list[dict[str, Any]]) -> int:
    """Messages sent again after one was accepted for the same (channel, delivery id): the
    repeats an idempotent provider dropped, and the second emails SMTP delivered."""
    counts = Counter(
        (record["channel"], record["delivery_id"])
        for record in records
        if record["accepted"] and record.get("delivery_id") is not None
    )
    return sum(count - 1 for count in counts.values() if count > 1)
