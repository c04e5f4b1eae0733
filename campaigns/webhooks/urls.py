"""anymail's webhook URLs (``/anymail/<esp>/tracking/``…), each refused while no
``ANYMAIL_WEBHOOK_SECRET`` is set, and recording the events of a post together
(``events_collected``: one transaction for a batch of a thousand, not a thousand).

anymail checks the basic auth only when a secret is set and otherwise accepts any post
(with a warning): anyone could then bounce or unsubscribe any address. Without a secret
each view answers as anymail answers a post with the wrong credentials: 400."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from anymail import urls as anymail_urls
from anymail.exceptions import AnymailWebhookValidationFailure
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern

from .anymail import events_collected

app_name = anymail_urls.app_name


def tracking_webhook(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def refusing_without_secret(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.ANYMAIL_WEBHOOK_SECRET:
            raise AnymailWebhookValidationFailure(
                "Provider webhooks are refused: set ANYMAIL_WEBHOOK_SECRET "
                "(user:password, the basic auth of the webhook URLs given to the provider)."
            )
        with events_collected():
            return view(request, *args, **kwargs)

    return refusing_without_secret


urlpatterns = [
    URLPattern(
        pattern.pattern, tracking_webhook(pattern.callback), pattern.default_args, pattern.name
    )
    for pattern in anymail_urls.urlpatterns
    if isinstance(pattern, URLPattern)
]
