"""The bytes of one email and its envelope addresses, for the SMTP wire path.

Built on Django: the ``EmailMultiAlternatives`` that ``EmailBackend.build_message`` builds,
rendered with CRLF line ends, and Django's ``sanitize_address``. Both functions raise
``ValueError`` for input that cannot be encoded (a header with a newline in it, an address
that does not parse).
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import parseaddr

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.message import sanitize_address

from channels.providers import OutboundMessage
from channels.providers.email import DELIVERY_ID_HEADER

__all__ = ["envelope_address", "message_bytes"]


def message_bytes(
    message: OutboundMessage, *, sender: str, reply_to: Sequence[str], message_id: str
) -> bytes:
    """The RFC 5322 message, CRLF line ends, as ``EmailBackend`` sends it: From `sender`,
    To the recipient, the subject, the text part and the HTML part when there is one, the
    message's own headers (``List-Unsubscribe``…), `message_id` and the delivery id."""
    email = EmailMultiAlternatives(
        subject=message.subject,
        body=message.body,
        from_email=sender,
        to=[message.to],
        reply_to=list(reply_to) or None,
        headers={
            **message.headers,
            "Message-ID": message_id,
            DELIVERY_ID_HEADER: str(message.delivery_id),
        },
    )
    if message.html_body:
        email.attach_alternative(message.html_body, "text/html")
    return email.message().as_bytes(linesep="\r\n")


def envelope_address(address: str) -> str:
    """The bare address (``local@domain``, the domain in IDNA) of MAIL FROM or RCPT TO for a
    sender or recipient, display name or not, as Django's SMTP backend puts it there."""
    bare = parseaddr(sanitize_address(address, settings.DEFAULT_CHARSET))[1]
    if not bare:
        raise ValueError(f"Invalid address {address!r}")
    return bare
