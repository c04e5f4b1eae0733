from rest_framework.routers import BaseRouter

from .views import MessagePresetViewSet, SuppressionViewSet


def register(router: BaseRouter) -> None:
    """Register this app's viewsets on the project's API router."""
    router.register("presets", MessagePresetViewSet, basename="preset")
    router.register("suppressions", SuppressionViewSet, basename="suppression")
