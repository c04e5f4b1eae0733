"""Unsubscribe links: a signed token naming one profile and one channel.

The link goes into every marketing email (``List-Unsubscribe``, with the one-click POST of
RFC 8058 that mailbox providers require from bulk senders) and leads to
``segments.views.unsubscribe``. The token is signed with the project's secret key, so it
can neither be forged nor pointed at another profile, and it never expires: a recipient
may unsubscribe from an old message.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core import signing
from django.urls import reverse

from .choices import ConsentChannel

_SIGNER_SALT = "salvo.unsubscribe"
_SLOT = "-"  # stands for the token while the URL is reversed


def unsubscribe_token(*, profile_id: int, channel: str) -> str:
    return signing.Signer(salt=_SIGNER_SALT).sign(f"{profile_id}.{channel}")


def unsubscribe_links() -> Callable[[int, str], str] | None:
    """Unsubscribe links for recipient after recipient, ``links(profile_id, channel)``, or
    None when SALVO_PUBLIC_URL (where recipients reach Salvo) is not set.

    The address around the token is worked out once: reversing the URL costs several times
    more than signing the token. Tokens hold only characters a URL path keeps as they are.
    """
    if not settings.SALVO_PUBLIC_URL:
        return None
    path = reverse("unsubscribe", kwargs={"token": _SLOT})
    head, _, tail = path.rpartition(_SLOT)
    prefix = settings.SALVO_PUBLIC_URL + head

    def link(profile_id: int, channel: str) -> str:
        return prefix + unsubscribe_token(profile_id=profile_id, channel=channel) + tail

    return link


def unsubscribe_url(*, profile_id: int, channel: str) -> str | None:
    """The absolute link, or None when SALVO_PUBLIC_URL is not set."""
    links = unsubscribe_links()
    return links(profile_id, channel) if links else None


def read_unsubscribe_token(token: str) -> tuple[int, str] | None:
    """The (profile id, channel) a token names, or None for a token Salvo did not sign."""
    try:
        value = signing.Signer(salt=_SIGNER_SALT).unsign(token)
    except signing.BadSignature:
        return None
    profile_id, _, channel = value.partition(".")
    if not profile_id.isdigit() or channel not in ConsentChannel.values:
        return None
    return int(profile_id), channel
