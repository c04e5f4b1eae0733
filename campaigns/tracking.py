"""Salvo's own open and click tracking for marketing email.

When a campaign tracks (``Campaign.track_opens`` / ``track_clicks``), it is a marketing
campaign, the action is email and ``SALVO_PUBLIC_URL`` says where recipients reach Salvo,
every message is rewritten as it renders (``MessageTracker.track``):

- opens: a 1×1 image ``{PUBLIC}/t/o/<token>.gif`` at the end of the HTML part (a text-only
  message has no way to report an open);
- clicks: every ``http(s)`` link of the HTML part (``href``) and of the text part goes to
  ``{PUBLIC}/t/c/<token>``, which records the click and answers 302 to the link. The
  unsubscribe link and ``mailto:`` links are left as they are.

A token is ``django.core.signing`` over the delivery id and, for a click, the URL, under a
key of its own (``SALVO_TRACKING_SECRET``, salt ``salvo.tracking``): a forged, altered or
truncated token is a 404, so the redirect can only ever lead where Salvo's own mail
pointed. Tokens never expire (mail is read late).

What a view records goes through ``campaigns.events.events_record`` (provider ``salvo``).
Event ids: an open is kept once per delivery per ``OPEN_BUCKET_S`` (mail programs fetch
the image each time the message is shown, and some prefetch it): the report counts unique
opens per delivery anyway, and a reader coming back an hour later is a new open. A click
is kept once per delivery, URL and ``CLICK_BUCKET_S``: a double click, or a link scanner
followed by the reader, records one click, while the same link followed again later
records another.

Cost at send: per recipient, one signature per distinct link (HMAC-SHA256 over a few dozen
bytes) and one regular-expression pass per part; the prefix of every URL is worked out once
per batch (``message_tracker``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse

from channels.choices import ChannelKind

from .choices import CampaignType, EventKind
from .events import ProviderEvent, events_record
from .models import Campaign, Delivery

PROVIDER = "salvo"
_SALT = "salvo.tracking"
_SLOT = "-"  # stands for the token while a URL is reversed
# One open per delivery per this many seconds, one click per delivery and link (see above).
OPEN_BUCKET_S = 3600
CLICK_BUCKET_S = 60
# A click token carries its URL; a longer link is left untracked rather than made longer.
TRACKED_URL_MAX_CHARS = 2000

# The 1×1 transparent GIF the open pixel answers with.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

# An http(s) link in the text part: up to whitespace or a character that ends a link in
# prose (<>"'), trailing punctuation left out.
_TEXT_LINK = re.compile(r"""https?://[^\s<>"']+[^\s<>"'.,;:!?)\]]""")
# An href attribute's value in the HTML part, quoted either way.
_HREF = re.compile(r"""(\bhref\s*=\s*)(["'])(https?://[^"']*)\2""", re.IGNORECASE)


def _signer() -> signing.Signer:
    return signing.Signer(key=settings.SALVO_TRACKING_SECRET, salt=_SALT)


def tracking_active(campaign: Campaign, *, channel: str) -> tuple[bool, bool]:
    """Whether the messages of ``campaign`` on ``channel`` carry the open pixel and tracked
    links: only marketing email, only when SALVO_PUBLIC_URL and SALVO_TRACKING_SECRET are
    set."""
    if (
        not settings.SALVO_PUBLIC_URL
        or not settings.SALVO_TRACKING_SECRET
        or channel != ChannelKind.EMAIL
        or campaign.type != CampaignType.MARKETING
    ):
        return False, False
    return campaign.track_opens, campaign.track_clicks


def tracking_words(campaign: Campaign) -> str:
    """The campaign's tracking switches in words, with why they have no effect if so."""
    on = [
        name
        for name, flag in (("opens", campaign.track_opens), ("clicks", campaign.track_clicks))
        if flag
    ]
    if not on:
        return "off"
    words = " and ".join(on)
    if campaign.type != CampaignType.MARKETING:
        return f"{words} (no effect: only marketing email is tracked)"
    if not settings.SALVO_PUBLIC_URL:
        return f"{words} (no effect until SALVO_PUBLIC_URL is set)"
    if not settings.SALVO_TRACKING_SECRET:
        return f"{words} (no effect until SALVO_TRACKING_SECRET is set)"
    return f"{words} (email)"


def _url_around(name: str) -> tuple[str, str]:
    path = reverse(name, kwargs={"token": _SLOT})
    head, _, tail = path.rpartition(_SLOT)
    return settings.SALVO_PUBLIC_URL + head, tail


@dataclass
class MessageTracker:
    """Rewrites one batch's messages, recipient after recipient (``message_tracker``)."""

    opens: bool
    clicks: bool
    keep: str  # links that are never rewritten start with this (the unsubscribe page)

    def __post_init__(self) -> None:
        self._sign = _signer().sign
        self._open_head, self._open_tail = _url_around("tracking-open")
        self._click_head, self._click_tail = _url_around("tracking-click")

    def track(self, delivery_id: int, text: str, html: str) -> tuple[str, str]:
        """The text and HTML parts of delivery ``delivery_id``'s message, tracked."""
        if self.clicks:
            links: dict[str, str] = {}  # each distinct link signed once per recipient

            def tracked(url: str) -> str:
                if url.startswith(self.keep) or len(url) > TRACKED_URL_MAX_CHARS:
                    return url
                link = links.get(url)
                if link is None:
                    token = self._sign(f"{delivery_id}:{url}")
                    link = links[url] = f"{self._click_head}{_encode(token)}{self._click_tail}"
                return link

            def tracked_href(match: re.Match[str]) -> str:
                attribute, quote, url = match.groups()
                return f"{attribute}{quote}{_html_link(tracked(_unescape(url)))}{quote}"

            text = _TEXT_LINK.sub(lambda match: tracked(match.group(0)), text)
            html = _HREF.sub(tracked_href, html) if html else html
        if self.opens and html:
            token = _encode(self._sign(str(delivery_id)))
            pixel = (
                f'<img src="{self._open_head}{token}{self._open_tail}" width="1" height="1" '
                'alt="" style="display:block;border:0;width:1px;height:1px">'
            )
            closing = html.lower().rfind("</body>")
            html = html + pixel if closing < 0 else html[:closing] + pixel + html[closing:]
        return text, html


def message_tracker(campaign: Campaign, *, channel: str) -> MessageTracker | None:
    """The batch's tracker, or None when its messages are not tracked."""
    opens, clicks = tracking_active(campaign, channel=channel)
    if not (opens or clicks):
        return None
    keep = (
        settings.SALVO_PUBLIC_URL
        + reverse("unsubscribe", kwargs={"token": _SLOT}).rpartition(_SLOT)[0]
    )
    return MessageTracker(opens=opens, clicks=clicks, keep=keep)


def _unescape(url: str) -> str:
    """An href as the browser reads it: the HTML part's ``&amp;`` is one ``&``."""
    return url.replace("&amp;", "&") if "&" in url else url


def _html_link(url: str) -> str:
    return url.replace("&", "&amp;") if "&" in url else url


# Tokens travel in a URL path: the URL and its separator are base64url-encoded so that no
# character of the link (a slash, a question mark) changes the path.
def _encode(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _decode(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class TrackedOpen:
    delivery_id: int


@dataclass(frozen=True)
class TrackedClick:
    delivery_id: int
    url: str


def tracked_open(token: str) -> TrackedOpen | None:
    """What an open token names, or None for anything Salvo did not sign."""
    value = _unsigned(token)
    if value is None or not value.isdigit():
        return None
    return TrackedOpen(int(value))


def tracked_click(token: str) -> TrackedClick | None:
    """What a click token names, or None for anything Salvo did not sign."""
    value = _unsigned(token)
    if value is None:
        return None
    delivery, _, url = value.partition(":")
    if not delivery.isdigit() or not url.startswith(("http://", "https://")):
        return None
    return TrackedClick(int(delivery), url)


def _unsigned(token: str) -> str | None:
    if not settings.SALVO_TRACKING_SECRET or len(token) > 2 * TRACKED_URL_MAX_CHARS + 200:
        return None
    signed = _decode(token)
    if signed is None:
        return None
    try:
        return _signer().unsign(signed)
    except signing.BadSignature:
        return None


def _recipient(delivery_id: int) -> tuple[str, bool]:
    """The delivery's profile's email (one query on the delivery's primary key and the
    profile's), and whether the delivery exists at all."""
    row = Delivery.objects.filter(pk=delivery_id).values_list("profile__email", flat=True).first()
    found = Delivery.objects.filter(pk=delivery_id).exists() if row is None else True
    return row or "", found


def _event_id(delivery_id: int, kind: str, bucket_s: int, now: dt.datetime, extra: str = "") -> str:
    bucket = int(now.timestamp()) // bucket_s
    digest = hashlib.blake2b(extra.encode(), digest_size=8).hexdigest() if extra else ""
    return f"{kind}:{delivery_id}:{bucket}:{digest}".rstrip(":")


def tracking_record(*, kind: str, delivery_id: int, now: dt.datetime, url: str = "") -> bool:
    """Record an open or a click of a delivery Salvo signed for; False when that delivery
    is gone (nothing to attach the event to)."""
    recipient, found = _recipient(delivery_id)
    if not found:
        return False
    bucket_s = CLICK_BUCKET_S if kind == EventKind.CLICKED else OPEN_BUCKET_S
    events_record(
        events=[
            ProviderEvent(
                provider=PROVIDER,
                event_id=_event_id(delivery_id, kind, bucket_s, now, url),
                kind=kind,
                channel=ChannelKind.EMAIL,
                occurred_at=now,
                delivery_id=delivery_id,
                recipient=recipient,
                detail=url,
            )
        ]
    )
    return True
