"""A user's own preferences (their time zone): read by the admin on every request, changed
by the user on the admin's Preferences page."""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.conf import settings
from django.db import transaction

from .models import UserPreference


def user_time_zone(*, user: Any) -> zoneinfo.ZoneInfo:
    """The zone `user` works in: their preference, else the site's TIME_ZONE (also for an
    anonymous visitor). One query for a signed-in user."""
    name = None
    if user.is_authenticated:
        name = UserPreference.objects.filter(user=user).values_list("time_zone", flat=True).first()
    return zoneinfo.ZoneInfo(name or settings.TIME_ZONE)


def user_preference_set(*, user: Any, time_zone: str) -> UserPreference:
    """Set `user`'s time zone; a name that is no IANA zone is refused (ValidationError on
    `time_zone`)."""
    with transaction.atomic():
        preference = UserPreference.objects.select_for_update().filter(
            user=user
        ).first() or UserPreference(user=user)
        preference.time_zone = time_zone
        preference.full_clean()
        preference.save()
    return preference
