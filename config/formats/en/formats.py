"""The admin's English date and time formats: Django's, with the time zone's abbreviation
(``T``) after every time, and the 24-hour clock the live report's chart uses."""

DATETIME_FORMAT = "N j, Y, H:i T"  # Nov. 29, 2026, 21:26 CET
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"  # 2026-11-29 21:26 CET
TIME_FORMAT = "H:i:s T"  # 21:26:05 CET
