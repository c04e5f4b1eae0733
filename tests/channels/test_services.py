"""The preset domain functions: permissions and the rules every door inherits."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from channels import services
from channels.models import MessagePreset
from tests.campaigns.factories import make_campaign
from tests.channels.factories import MessagePresetFactory

pytestmark = pytest.mark.django_db


def test_the_channel_of_a_preset_campaigns_use_never_changes():
    preset = make_campaign().draft_version.actions.get(channel="sms").preset

    with pytest.raises(ValidationError) as refused:
        services.preset_update(
            preset=preset, user=None, data={"channel": "push", "push_app_id": "com.example"}
        )

    assert "1 use this one" in refused.value.message_dict["channel"][0]
    assert MessagePreset.objects.get(pk=preset.pk).channel == "sms"


def test_the_same_channel_is_not_a_change():
    preset = MessagePresetFactory.create(channel="sms")

    services.preset_update(preset=preset, user=None, data={"channel": "sms", "name": "Texts"})

    assert MessagePreset.objects.get(pk=preset.pk).name == "Texts"


@pytest.mark.parametrize(
    ("call", "needs"),
    [
        (
            lambda preset, user: services.preset_create(
                user=user, data={"name": "N", "channel": "sms", "sms_sender_id": "SHOP"}
            ),
            ["channels.add_messagepreset"],
        ),
        (
            lambda preset, user: services.preset_update(
                preset=preset, user=user, data={"name": "Renamed"}
            ),
            ["channels.view_messagepreset", "channels.change_messagepreset"],
        ),
        (
            lambda preset, user: services.preset_delete(preset=preset, user=user),
            ["channels.delete_messagepreset"],
        ),
    ],
    ids=["create", "update", "delete"],
)
def test_each_service_needs_its_permissions(user_with_perms, call, needs):
    preset = MessagePresetFactory.create(channel="sms", name="Kept")
    every = {f"channels.{action}_messagepreset" for action in ("view", "add", "change", "delete")}
    for missing in needs:
        user = user_with_perms(*(every - {missing}))

        with pytest.raises(PermissionDenied, match=missing):
            call(preset, user)

        assert list(MessagePreset.objects.values_list("name", flat=True)) == ["Kept"]
    call(preset, user_with_perms(*needs))
