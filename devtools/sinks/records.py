"""Reading a sink's record file: one JSON line per attempt, from any process.

A benchmark's record holds tens of millions of lines: ``iter_records`` streams them from a
byte offset (``record_end`` before a run: only that run's lines are read again), and
``count_duplicates`` remembers a bit per delivery id. ``read_records`` is for tests."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .idset import IdSet

_BLOCK = 1 << 16
# A line as the sink writes most (compact JSON, these keys first): its channel, delivery id
# and whether it was accepted, read without parsing it (~0.7 µs a line, not ~3.3 µs).
_USUAL_LINE = re.compile(
    rb'\{"channel":"([^"\\]*)","delivery_id":"([0-9]{1,18})",'
    rb'(?:[^{}"]|"[^"\\]*")*?"accepted":(true|false)[,}]'
)


def record_end(path: Path | str) -> int:
    """The byte offset after the record's last complete line (0 when there is none yet):
    where the lines of what is sent next begin."""
    try:
        with Path(path).open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            while end > 0:
                start = max(0, end - _BLOCK)
                file.seek(start)
                block = file.read(end - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    return start + newline + 1
                end = start
    except FileNotFoundError:
        pass
    return 0


def iter_records(path: Path | str, start: int = 0) -> Iterator[dict[str, Any]]:
    """The attempts recorded from byte offset ``start`` on, one at a time (a line still
    being written is left for next time)."""
    if not Path(path).exists():
        return
    with Path(path).open("rb") as file:
        file.seek(start)
        for line in file:
            if not line.endswith(b"\n"):
                return
            yield json.loads(line)


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """Every attempt recorded so far, in a list (tests: their records are few)."""
    return list(iter_records(path))


def first_accepted_at(path: Path | str, start: int = 0) -> float | None:
    """When the first message accepted after byte offset ``start`` was recorded (None if
    none was). The sink appends its lines in the order it answers, so the first accepted
    line is the earliest: the read stops there."""
    return next((record["at"] for record in iter_records(path, start) if record["accepted"]), None)


def count_duplicates(records: Iterable[dict[str, Any]]) -> int:
    """Messages sent again after one was accepted for the same (channel, delivery id): the
    repeats an idempotent provider dropped, and the second emails SMTP delivered. Streams
    (``iter_records``): a bit per delivery id, not the records, is kept."""
    accepted: dict[str, IdSet] = {}
    duplicates = 0
    for record in records:
        delivery_id = record.get("delivery_id")
        if not record["accepted"] or delivery_id is None:
            continue
        seen = accepted.get(record["channel"])
        if seen is None:
            seen = accepted[record["channel"]] = IdSet()
        if not seen.add(str(delivery_id)):
            duplicates += 1
    return duplicates


def count_duplicates_in(path: Path | str, start: int = 0) -> int:
    """``count_duplicates`` of the record from byte offset ``start``, faster: a benchmark's
    record has a line per attempt of every run (~80 million at 10M profiles × 2 channels)."""
    accepted: dict[bytes, IdSet] = {}
    duplicates = 0
    if not Path(path).exists():
        return 0
    with Path(path).open("rb") as file:
        file.seek(start)
        for line in file:
            if not line.endswith(b"\n"):
                break
            match = _USUAL_LINE.match(line)
            if match is not None:
                channel, delivery_id, flag = match.groups()
                if flag != b"true":
                    continue
                key = delivery_id.decode()
            else:
                record = json.loads(line)
                if not record["accepted"] or record.get("delivery_id") is None:
                    continue
                channel, key = record["channel"].encode(), str(record["delivery_id"])
            seen = accepted.get(channel)
            if seen is None:
                seen = accepted[channel] = IdSet()
            if not seen.add(key):
                duplicates += 1
    return duplicates
