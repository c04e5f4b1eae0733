from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        from anymail.signals import tracking

        from .webhooks.anymail import tracking_received

        # Providers' tracking webhooks become delivery events (campaigns.events).
        tracking.connect(tracking_received, dispatch_uid="salvo-anymail-tracking")
