"""Message preset domain functions: the admin and the REST API change presets through these.

Each checks the user's permission, validates the whole preset (the sender setting its channel
needs, a registered backend serving that channel, a webhook URL it may reach) and refuses a
change of channel: campaign actions choose presets by channel, and an action whose preset
turned into another channel's would break silently. Errors: `ValidationError` (400, a form
error), `PermissionDenied` (403), `PresetInUse` when campaign actions still need the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import ProtectedError

from config.permissions import require_perms

from .choices import ALL_SENDER_FIELDS
from .models import MessagePreset

# What the services let a caller set; the rest (ids, times) is the database's.
PRESET_FIELDS = (
    "name",
    "channel",
    "description",
    *ALL_SENDER_FIELDS,
    "backend",
    "rate_limit_per_second",
    # Quiet hours in the recipient's time zone (campaigns.delivery.timing).
    "quiet_hours_start",
    "quiet_hours_end",
)


class PresetInUse(Exception):
    """The preset cannot go: campaign actions use it."""


def _apply(preset: MessagePreset, data: Mapping[str, Any]) -> None:
    unknown = sorted(set(data) - set(PRESET_FIELDS))
    if unknown:
        raise ValidationError({name: "Unknown preset field." for name in unknown})
    for name, value in data.items():
        setattr(preset, name, value)
    preset.full_clean()


@transaction.atomic
def preset_create(*, user: Any, data: Mapping[str, Any]) -> MessagePreset:
    require_perms(user, "channels.add_messagepreset", to="create a message preset")
    preset = MessagePreset()
    _apply(preset, data)
    preset.save()
    return preset


@transaction.atomic
def preset_update(*, preset: MessagePreset, user: Any, data: Mapping[str, Any]) -> MessagePreset:
    """Change the given fields; the channel is fixed once the preset exists. The changed
    preset is shown to the caller: changing needs the view permission too."""
    require_perms(
        user,
        "channels.view_messagepreset",
        "channels.change_messagepreset",
        to="change a message preset",
    )
    preset = MessagePreset.objects.select_for_update().get(pk=preset.pk)
    if "channel" in data and data["channel"] != preset.channel:
        used_by = preset.actions.count()
        raise ValidationError(
            {
                "channel": f"The channel of preset “{preset.name}” "
                f"({preset.get_channel_display()}) cannot change: campaign actions choose "
                "presets by channel"
                + (f" ({used_by} use this one)" if used_by else "")
                + ". Create a new preset instead."
            }
        )
    _apply(preset, data)
    preset.save()
    return preset


@transaction.atomic
def preset_delete(*, preset: MessagePreset, user: Any) -> None:
    require_perms(user, "channels.delete_messagepreset", to="delete a message preset")
    try:
        with transaction.atomic():
            preset.delete()
    except ProtectedError as error:
        raise PresetInUse(
            f"Preset “{preset.name}” is used by campaign actions and cannot be deleted."
        ) from error
