from rest_framework.routers import BaseRouter

from .views import ProfileViewSet, SegmentViewSet


def register(router: BaseRouter) -> None:
    """Register this app's viewsets on the project's API router."""
    router.register("profiles", ProfileViewSet, basename="profile")
    router.register("segments", SegmentViewSet, basename="segment")
