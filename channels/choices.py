"""The channels and, in one registry, what each has: a new channel is one entry here.

``CHANNELS`` is the registry (NetBox's ``Choice(value, label, color)`` grown to a channel's
facts). It lives beside ``ChannelKind`` rather than in a module of its own because the
names derived from it (``CHANNELS_WITH_SUBJECT``, ``SENDER_FIELDS``, ``subject_refusal``)
are read from here by the services, forms and proofs; a registry module importing
``ChannelKind`` from here could not be re-exported here without a cycle.

The profile's columns of a channel (its address, its consent) are facts of the profile,
which ``segments`` owns and must read without importing ``channels`` (the layers are
config → campaigns → channels → segments): they are written once in ``segments.choices``
and each entry here points at them.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models

from segments.choices import ADDRESS_FIELDS, channel_consent_field


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push"
    WEBHOOK = "webhook", "Webhook"


@dataclass(frozen=True)
class Channel:
    """What one channel's messages, presets and recipients have besides a body."""

    kind: ChannelKind
    # Whether its message has a subject (an email's subject, a push's title, the "subject"
    # of a webhook's JSON); the services refuse one on a channel without (an SMS is its
    # body alone), and whether an action cannot go without one (an email).
    has_subject: bool
    subject_required: bool
    # The preset's sender settings (who the message comes from), the one it cannot go
    # without, and the title of their fieldset in the preset's admin.
    sender_fields: tuple[str, ...]
    required_sender_field: str
    sender_title: str
    # The environment variable naming the channel's default provider backend
    # (``settings.SALVO_PROVIDER_BACKENDS[kind]``).
    backend_setting: str

    @property
    def label(self) -> str:
        return str(self.kind.label)

    @property
    def address_field(self) -> str | None:
        """The Profile column a message goes to; None: the preset's URL (a webhook)."""
        return ADDRESS_FIELDS.get(self.kind)

    @property
    def consent_field(self) -> str | None:
        """The Profile column a marketing message needs true; None: no consent to ask."""
        return channel_consent_field(self.kind)


CHANNELS: dict[str, Channel] = {
    channel.kind: channel
    for channel in (
        Channel(
            kind=ChannelKind.EMAIL,
            has_subject=True,
            subject_required=True,
            sender_fields=("from_name", "from_email", "reply_to"),
            required_sender_field="from_email",
            sender_title="Email sender",
            backend_setting="SALVO_EMAIL_BACKEND",
        ),
        Channel(
            kind=ChannelKind.SMS,
            has_subject=False,
            subject_required=False,
            sender_fields=("sms_sender_id",),
            required_sender_field="sms_sender_id",
            sender_title="SMS sender",
            backend_setting="SALVO_SMS_BACKEND",
        ),
        Channel(
            kind=ChannelKind.PUSH,
            has_subject=True,
            subject_required=False,
            sender_fields=("push_app_id",),
            required_sender_field="push_app_id",
            sender_title="Push application",
            backend_setting="SALVO_PUSH_BACKEND",
        ),
        Channel(
            kind=ChannelKind.WEBHOOK,
            has_subject=True,
            subject_required=False,
            sender_fields=("webhook_url",),
            required_sender_field="webhook_url",
            sender_title="Webhook endpoint",
            backend_setting="SALVO_WEBHOOK_BACKEND",
        ),
    )
}

# The static script that shows only the chosen channel's fields in the browser, reading the
# facts below from the rendered form (channels/static/channels/channel_fields.js).
CHANNEL_FIELDS_SCRIPT = "channels/channel_fields.js"

# Read by the services (which refuse what a channel has not), the admin forms (which show
# only the chosen channel's fields) and that script.
CHANNELS_WITH_SUBJECT: frozenset[str] = frozenset(
    kind for kind, channel in CHANNELS.items() if channel.has_subject
)
SENDER_FIELDS: dict[str, tuple[str, ...]] = {
    kind: channel.sender_fields for kind, channel in CHANNELS.items()
}
# Every channel's sender settings: the preset's columns a caller may set besides its own.
ALL_SENDER_FIELDS: tuple[str, ...] = tuple(
    name for channel in CHANNELS.values() for name in channel.sender_fields
)

# The sender setting each channel cannot go without (read as `channels.models.REQUIRED_SENDER_FIELD`
# too, where the preset's check uses it).
REQUIRED_SENDER_FIELD: dict[str, str] = {
    kind: channel.required_sender_field for kind, channel in CHANNELS.items()
}


def subject_refusal(channel: str) -> str:
    """Why an action of ``channel`` cannot carry a subject ('' when it can)."""
    if channel not in CHANNELS or CHANNELS[channel].has_subject:
        return ""
    return (
        f"An {CHANNELS[channel].label} message has no subject; leave it empty "
        "(only the body is sent)."
    )


# --- suppression ------------------------------------------------------------------------


class SuppressionReason(models.TextChoices):
    """Why an address gets no more messages on its channel."""

    HARD_BOUNCE = "hard_bounce", "Hard bounce"
    INVALID_ADDRESS = "invalid_address", "Invalid or unreachable address"
    COMPLAINT = "complaint", "Spam complaint"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed at the provider"
    MANUAL = "manual", "Added by hand"


# The reasons that stop transactional messages too: an address that does not exist is not
# reached by a receipt either, and mailing it again costs the sender's reputation. A
# complaint or an unsubscribe is about marketing, which a receipt is not.
SUPPRESSES_TRANSACTIONAL: frozenset[str] = frozenset(
    {SuppressionReason.HARD_BOUNCE, SuppressionReason.INVALID_ADDRESS}
)


class SuppressionSource(models.TextChoices):
    """Which door or provider put an address on the list."""

    PROVIDER = "provider", "Provider event"
    ADMIN = "admin", "Admin"
    API = "api", "API"
    IMPORT = "import", "Import"
    COMMAND = "command", "Command"


def normalized_address(channel: str, address: str) -> str:
    """The form an address is suppressed and looked up in: an email address compared
    without case (every mailbox provider Salvo sends to treats it so), any other address
    as written, without surrounding blanks."""
    address = address.strip()
    return address.lower() if channel == ChannelKind.EMAIL else address
