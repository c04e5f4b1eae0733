"""Public pages that message recipients reach from the internet (no login)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import services
from .choices import ConsentChannel
from .unsubscribe import read_unsubscribe_token


# Mailbox providers send the one-click POST (RFC 8058) without any cookie or CSRF token: the
# signed token in the URL is the only credential, and it names one profile and one channel
# (segments/unsubscribe.py says how it cannot be forged or pointed at another profile).
@csrf_exempt
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET asks for confirmation (link scanners fetch links and must not unsubscribe
    anyone); POST, from that page or a mail client's one-click, withdraws the consent."""
    link = read_unsubscribe_token(token)
    if link is None:
        return render(request, "segments/unsubscribe.html", {"invalid": True}, status=404)
    context: dict[str, Any] = {"channel": ConsentChannel(link.channel).label, "token": token}
    if request.method == "POST":
        if link.profile_id is not None:
            services.profile_unsubscribe(profile_id=link.profile_id, channel=link.channel)
        context["done"] = True
    return render(request, "segments/unsubscribe.html", context)
