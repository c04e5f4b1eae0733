"""The admin in the signed-in user's own time zone."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from .preferences import user_time_zone


class AdminTimeZoneMiddleware:
    """Activates the user's time zone (campaigns.preferences) for every admin request, so
    each time the admin shows is in it, with its name (config/formats), and each date and
    time typed in an admin form is read in it, then stored in UTC. Other doors keep the
    site's TIME_ZONE: the API speaks ISO 8601 with an offset, which needs no preference."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(reverse("admin:index")):
            return self.get_response(request)
        timezone.activate(user_time_zone(user=request.user))
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
