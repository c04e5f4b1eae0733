"""Sets and counters of delivery ids in memory that stays small at tens of millions of
messages: what the sinks and the benchmark's readers remember per message."""

from __future__ import annotations

from collections import Counter

# Ids per chunk of the bitmap: 2**16 bits, 8 KiB, made when an id in its range arrives.
_CHUNK_SHIFT = 16
_CHUNK_MASK = (1 << _CHUNK_SHIFT) - 1
_CHUNK_BYTES = (1 << _CHUNK_SHIFT) // 8
# Longer digit strings are not database ids: kept as strings, like any other key.
_MAX_DIGITS = 18


def as_id(key: str) -> int | None:
    """The integer a key spells in canonical decimal (``"42"``, not ``"042"``), else None."""
    if (
        key.isascii()
        and key.isdigit()
        and len(key) <= _MAX_DIGITS
        and (key[0] != "0" or len(key) == 1)
    ):
        return int(key)
    return None


class IdSet:
    """A set of keys: integer ids as bits of a bitmap in chunks (one bit per id in the
    ranges that occur, ~1.25 MB per 10 million consecutive ids), other keys in a set."""

    def __init__(self) -> None:
        self._chunks: dict[int, bytearray] = {}
        self._others: set[str] = set()
        self._len = 0

    def add(self, key: str) -> bool:
        """Add the key; True when it was not in the set yet."""
        number = as_id(key)
        if number is None:
            if key in self._others:
                return False
            self._others.add(key)
            self._len += 1
            return True
        chunk = self._chunks.get(number >> _CHUNK_SHIFT)
        if chunk is None:
            chunk = self._chunks[number >> _CHUNK_SHIFT] = bytearray(_CHUNK_BYTES)
        bit = number & _CHUNK_MASK
        mask = 1 << (bit & 7)
        if chunk[bit >> 3] & mask:
            return False
        chunk[bit >> 3] |= mask
        self._len += 1
        return True

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        number = as_id(key)
        if number is None:
            return key in self._others
        chunk = self._chunks.get(number >> _CHUNK_SHIFT)
        bit = number & _CHUNK_MASK
        return chunk is not None and bool(chunk[bit >> 3] & (1 << (bit & 7)))

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """The bitmap's bytes (the set of other keys not included)."""
        return len(self._chunks) * _CHUNK_BYTES


class AttemptCounter:
    """Attempts per (channel, key), exact: a key's first attempt costs one bit; only keys
    tried again (a retry, a repeat: few, even in a benchmark of millions) are counted in a
    Counter."""

    def __init__(self) -> None:
        self._tried: dict[str, IdSet] = {}
        self._again: Counter[tuple[str, str]] = Counter()

    def add(self, channel: str, key: str) -> int:
        """Count one more attempt; its number (1 for the first)."""
        tried = self._tried.get(channel)
        if tried is None:
            tried = self._tried[channel] = IdSet()
        if tried.add(key):
            return 1
        self._again[(channel, key)] += 1
        return self._again[(channel, key)] + 1

    def count(self, channel: str, key: str) -> int:
        """The attempts counted so far (0 for a key never tried)."""
        tried = self._tried.get(channel)
        if tried is None or key not in tried:
            return 0
        return 1 + self._again.get((channel, key), 0)
