from django.db import models


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push"
    WEBHOOK = "webhook", "Webhook"


# What each channel's message and preset have besides a body: read by the services (which
# refuse what a channel has not), the admin forms (which show only the chosen channel's
# fields) and the script that hides the others in the browser.

# The static script that does it (channels/static/channels/channel_fields.js).
CHANNEL_FIELDS_SCRIPT = "channels/channel_fields.js"

# The channels whose message has a subject: an email's subject, a push's title, the
# "subject" of a webhook's JSON. An SMS is its body alone.
CHANNELS_WITH_SUBJECT: frozenset[str] = frozenset(
    {ChannelKind.EMAIL, ChannelKind.PUSH, ChannelKind.WEBHOOK}
)

# The sender settings of a preset of each channel (who the message comes from).
SENDER_FIELDS: dict[str, tuple[str, ...]] = {
    ChannelKind.EMAIL: ("from_name", "from_email", "reply_to"),
    ChannelKind.SMS: ("sms_sender_id",),
    ChannelKind.PUSH: ("push_app_id",),
    ChannelKind.WEBHOOK: ("webhook_url",),
}


def subject_refusal(channel: str) -> str:
    """Why an action of ``channel`` cannot carry a subject ('' when it can)."""
    if channel in CHANNELS_WITH_SUBJECT or channel not in ChannelKind.values:
        return ""
    return (
        f"An {ChannelKind(channel).label} message has no subject; leave it empty "
        "(only the body is sent)."
    )
