"""Unsubscribe links: a signed token naming one profile and one channel.

The link goes into every marketing email (``List-Unsubscribe``, with the one-click POST of
RFC 8058 that mailbox providers require from bulk senders) and leads to
``segments.views.unsubscribe``. It never expires: a recipient may unsubscribe from an old
message.

A token reads ``<profile id>.<channel>.<binding>:<signature>``. The signature is Django's
signer (HMAC-SHA256) under ``SALVO_UNSUBSCRIBE_SECRET``, a key of the links' own (see
settings): without it nothing can be forged. The binding is a digest of the profile's
external id, so that even with the key a link cannot be made from a profile id alone (ids
are sequential), and a link names only the profile it was sent to: one whose external id
has changed since, or that another profile's link is pointed at, is not unsubscribed by it.

Links signed before they had a key of their own (``<id>.<channel>:<signature>``, under the
secret key) are read only under a key listed in ``SALVO_UNSUBSCRIBE_SECRET_FALLBACKS``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse

from .choices import ConsentChannel
from .models import Profile

_SIGNER_SALT = "salvo.unsubscribe.link"
# The salt of the links signed with the secret key, before they had a key and a binding.
_OLD_SIGNER_SALT = "salvo.unsubscribe"
_SLOT = "-"  # stands for the token while the URL is reversed


@dataclass(frozen=True)
class UnsubscribeLink:
    """What a link that Salvo signed names: a channel, and the profile it may withdraw
    consent from (None when that profile was deleted since: nothing left to do)."""

    channel: str
    profile_id: int | None


def _binding(external_id: str) -> str:
    # 72 bits: not a secret, a name; long enough that no one guesses one that fits.
    digest = hashlib.blake2b(external_id.encode(), digest_size=9).digest()
    return base64.urlsafe_b64encode(digest).decode()


def _signer() -> signing.Signer:
    return signing.Signer(
        key=settings.SALVO_UNSUBSCRIBE_SECRET,
        fallback_keys=settings.SALVO_UNSUBSCRIBE_SECRET_FALLBACKS,
        salt=_SIGNER_SALT,
    )


def unsubscribe_token(*, profile_id: int, external_id: str, channel: str) -> str:
    return _signer().sign(f"{profile_id}.{channel}.{_binding(external_id)}")


def unsubscribe_links() -> Callable[[int, str, str], str] | None:
    """Unsubscribe links for recipient after recipient, ``links(profile_id, external_id,
    channel)``, or None when SALVO_PUBLIC_URL (where recipients reach Salvo) is not set.

    The address around the token and the signer are worked out once: reversing the URL
    costs several times more than signing the token. Tokens hold only characters a URL path
    keeps as they are."""
    if not settings.SALVO_PUBLIC_URL:
        return None
    path = reverse("unsubscribe", kwargs={"token": _SLOT})
    head, _, tail = path.rpartition(_SLOT)
    prefix = settings.SALVO_PUBLIC_URL + head
    sign = _signer().sign

    def link(profile_id: int, external_id: str, channel: str) -> str:
        return prefix + sign(f"{profile_id}.{channel}.{_binding(external_id)}") + tail

    return link


def unsubscribe_url(*, profile_id: int, external_id: str, channel: str) -> str | None:
    """The absolute link, or None when SALVO_PUBLIC_URL is not set."""
    links = unsubscribe_links()
    return links(profile_id, external_id, channel) if links else None


def _unsign(token: str) -> str | None:
    """The value of a token signed by Salvo: current links under the key or its fallbacks,
    links from before the binding under the fallbacks only (never under the current key,
    which signs none)."""
    try:
        return _signer().unsign(token)
    except signing.BadSignature:
        pass
    old_keys = settings.SALVO_UNSUBSCRIBE_SECRET_FALLBACKS
    if not old_keys:
        return None
    old = signing.Signer(key=old_keys[0], fallback_keys=old_keys[1:], salt=_OLD_SIGNER_SALT)
    try:
        value = old.unsign(token)
    except signing.BadSignature:
        return None
    return value if value.count(".") == 1 else None


def read_unsubscribe_token(token: str) -> UnsubscribeLink | None:
    """What a token names, or None for a token Salvo did not sign, or that names a profile
    other than the one it was sent to."""
    value = _unsign(token)
    if value is None:
        return None
    profile_id, channel, *binding = value.split(".")
    if not profile_id.isdigit() or channel not in ConsentChannel.values or len(binding) > 1:
        return None
    external_id = (
        Profile.objects.filter(pk=int(profile_id)).values_list("external_id", flat=True).first()
    )
    if external_id is None:
        return UnsubscribeLink(channel=channel, profile_id=None)
    if binding and not hmac.compare_digest(binding[0], _binding(external_id)):
        return None
    return UnsubscribeLink(channel=channel, profile_id=int(profile_id))
