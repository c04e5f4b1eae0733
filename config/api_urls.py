"""One router for the whole API; each app registers its viewsets in `<app>/api/urls.py`."""

from rest_framework.routers import DefaultRouter

from campaigns.api.urls import register as register_campaigns
from channels.api.urls import register as register_channels
from segments.api.urls import register as register_segments

router = DefaultRouter()
register_segments(router)
register_channels(router)
register_campaigns(router)

urlpatterns = router.urls
