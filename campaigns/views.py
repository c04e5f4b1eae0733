"""Public endpoints of Salvo's own tracking (``campaigns.tracking``), reached from the
internet by recipients' mail programs: no login, no session, never a 500 on junk."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .choices import EventKind
from .tracking import PIXEL_GIF, tracked_click, tracked_open, tracking_record


@never_cache
@require_GET
def tracking_open(request: HttpRequest, token: str) -> HttpResponse:
    """The open pixel: records an open of the delivery the token names, answers a 1×1 GIF
    that no cache keeps (so every showing of the message asks again)."""
    opened = tracked_open(token)
    if opened is None:
        raise Http404("Unknown tracking link.")
    tracking_record(kind=EventKind.OPENED, delivery_id=opened.delivery_id, now=timezone.now())
    return HttpResponse(PIXEL_GIF, content_type="image/gif")


@never_cache
@require_GET
def tracking_click(request: HttpRequest, token: str) -> HttpResponse:
    """A tracked link: records the click and sends the browser on to the link Salvo signed;
    anything Salvo did not sign is a 404 and leads nowhere."""
    clicked = tracked_click(token)
    if clicked is None:
        raise Http404("Unknown tracking link.")
    tracking_record(
        kind=EventKind.CLICKED, delivery_id=clicked.delivery_id, now=timezone.now(), url=clicked.url
    )
    return HttpResponseRedirect(clicked.url)
