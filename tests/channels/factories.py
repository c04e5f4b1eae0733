import factory

from channels.choices import ChannelKind
from channels.models import MessagePreset


class MessagePresetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MessagePreset

    name = factory.Sequence(lambda n: f"Preset {n}")
    channel = ChannelKind.EMAIL
    from_name = "Salvo"
    from_email = "news@example.com"
    sms_sender_id = "SALVO"
    push_app_id = "com.example.app"
    webhook_url = "http://127.0.0.1:9/hook"
