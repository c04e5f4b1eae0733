"""How the admin writes a moment: in the current time zone, always with the zone's name.

``FORMAT_MODULE_PATH`` points Django here, so every datetime a template shows (``{{ at }}``,
``|date:"SHORT_DATETIME_FORMAT"``, ``|time``) and every admin list or read-only cell uses
the formats of ``en/formats.py``; Python code that writes one calls ``short_datetime``.
"""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from django.utils.formats import date_format


def short_datetime(value: dt.datetime) -> str:
    """A moment in a list cell or a caption: "2026-11-29 21:26 CET"."""
    return date_format(timezone.localtime(value), "SHORT_DATETIME_FORMAT")
