from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from campaigns.views import tracking_click, tracking_open
from campaigns.webhooks.twilio import twilio_inbound, twilio_status
from config.metrics import metrics_view
from segments.views import unsubscribe

admin.site.site_header = "Salvo"
admin.site.site_title = "Salvo"
admin.site.index_title = "Campaigns, audiences and channels"

# The split view serves its script at `?script` rather than inline, so the docs page needs
# nothing beyond the site's Content-Security-Policy (config/settings.py).
api_docs = SpectacularSwaggerSplitView.as_view(url_name="schema")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", api_docs, name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("unsubscribe/<str:token>/", unsubscribe, name="unsubscribe"),
    path("metrics", metrics_view, name="metrics"),
    path("webhooks/twilio/status/", twilio_status, name="twilio-status"),
    path("webhooks/twilio/inbound/", twilio_inbound, name="twilio-inbound"),
    # Own open and click tracking (campaigns.tracking).
    path("t/o/<str:token>.gif", tracking_open, name="tracking-open"),
    path("t/c/<str:token>", tracking_click, name="tracking-click"),
    # Providers' tracking webhooks (anymail's views, refused without a secret to check).
    path("anymail/", include("campaigns.webhooks.urls")),
]
