from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        from anymail.signals import tracking

        from .webhooks.anymail import tracking_received

        # Providers' tracking webhooks become delivery events (campaigns.events).
        tracking.connect(tracking_received, dispatch_uid="salvo-anymail-tracking")
        # Every new execution has the partition its deliveries go to, whoever created it
        # (campaigns.delivery.partitions), in the transaction that creates it.
        from django.db.models.signals import post_save

        from .delivery.partitions import partition_ensure_for_new
        from .models import Execution

        post_save.connect(
            partition_ensure_for_new, sender=Execution, dispatch_uid="salvo-delivery-partition"
        )
