from django.db import models


class SegmentKind(models.TextChoices):
    RULES = "rules", "Rule-based"
    STATIC = "static", "Static list"


class ConsentChannel(models.TextChoices):
    """The channels a profile gives or withdraws marketing consent for."""

    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push"


# The Profile columns of each channel a profile is reached on, written here once (this app
# owns the profile) and read by the channel registry (``channels.choices.CHANNELS``), which
# segments must not import.


def consent_field(channel: str) -> str:
    """The Profile column holding a channel's consent, e.g. "consent_email"."""
    return f"consent_{ConsentChannel(channel).value}"


def channel_consent_field(channel: str) -> str | None:
    """The consent column of a channel of any kind, or None for one without consent (a
    webhook): what a marketing message on it needs true."""
    return consent_field(channel) if channel in ConsentChannel.values else None


CONSENT_FIELDS = tuple(consent_field(channel) for channel in ConsentChannel.values)
# The Profile column holding each consent channel's address: a message of that channel goes
# to that column's value, and a profile with it blank cannot be reached there (the delivery
# engine skips it as "no address"; a segment's reach counts it out).
ADDRESS_FIELDS: dict[str, str] = {
    ConsentChannel.EMAIL: "email",
    ConsentChannel.SMS: "phone",
    ConsentChannel.PUSH: "push_token",
}


class ConsentSource(models.TextChoices):
    """Where the last change of a consent came from (kept beside the change time)."""

    API = "api", "REST API"
    ADMIN = "admin", "Admin"
    IMPORT = "import", "Import"
    UNSUBSCRIBE = "unsubscribe", "Unsubscribe link"
    SYSTEM = "system", "System"
    # The person opted out at the provider: an ESP's unsubscribe or spam complaint, or
    # Twilio's "opted out" error (campaigns.events).
    PROVIDER = "provider", "Provider (unsubscribe or complaint)"
    # The person texted an opt-out or opt-in keyword (STOP, START…) to the sending number.
    SMS_KEYWORD = "sms_keyword", "SMS keyword (STOP, START…)"


class ImportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    JSONL = "jsonl", "JSON lines"
