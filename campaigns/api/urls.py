from rest_framework.routers import BaseRouter

from .caps import FrequencyCapViewSet
from .conversions import ConversionViewSet
from .views import CampaignViewSet


def register(router: BaseRouter) -> None:
    """Register this app's viewsets on the project's API router."""
    router.register("campaigns", CampaignViewSet, basename="campaign")
    router.register("frequency-caps", FrequencyCapViewSet, basename="frequency-cap")
    router.register("conversions", ConversionViewSet, basename="conversion")
