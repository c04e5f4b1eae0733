"""How long an SMS is, as the networks count it (3GPP TS 23.038, "GSM 03.38").

A text made only of the GSM 7-bit default alphabet goes as GSM-7: each character of the
basic set is one septet, each of the extension table (``^{}\\[~]|€`` and form feed) two (an
escape and the character). One message holds 160 septets; a longer text is split into parts
of 153, the user data header taking the rest, and an escape pair is never split across
two parts.

Any other character makes the whole text UCS-2: 70 UTF-16 code units in one message, 67 per
part of a longer one; a character outside the Basic Multilingual Plane (most emoji) is a
surrogate pair, two units, never split across two parts either.

The preview shows these figures; the review warns when a text takes more than one segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["GSM7", "UCS2", "SmsLength", "sms_segments"]

GSM7: Literal["GSM-7"] = "GSM-7"
UCS2: Literal["UCS-2"] = "UCS-2"

# The basic character set, in code order 0x00–0x7F; 0x1B (the escape to the extension
# table) is not a character of its own.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each is sent as the escape and a second septet.
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

# (one message, each part of a concatenated message), in the encoding's units.
_CAPACITY = {GSM7: (160, 153), UCS2: (70, 67)}


@dataclass(frozen=True)
class SmsLength:
    """A text's length as an SMS: its encoding, its length in that encoding's units
    (septets for GSM-7, extension characters counting two; UTF-16 code units for UCS-2)
    and the number of messages (segments) it takes; 0 for an empty text."""

    encoding: Literal["GSM-7", "UCS-2"]
    characters: int
    segments: int

    def as_dict(self) -> dict[str, str | int]:
        return {"encoding": self.encoding, "characters": self.characters, "segments": self.segments}


def _units(text: str, encoding: str) -> list[int]:
    """Each character's size in the encoding's units."""
    if encoding == GSM7:
        return [2 if char in _GSM7_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def sms_segments(text: str) -> SmsLength:
    """The encoding, length and number of segments of ``text`` sent as one SMS."""
    encoding = GSM7 if all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in text) else UCS2
    units = _units(text, encoding)
    characters = sum(units)
    single, part = _CAPACITY[encoding]
    if characters <= single:
        return SmsLength(encoding, characters, 1 if characters else 0)
    segments, used = 1, 0
    for size in units:  # a character that does not fit whole starts the next part
        if used + size > part:
            segments, used = segments + 1, 0
        used += size
    return SmsLength(encoding, characters, segments)
