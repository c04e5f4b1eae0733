from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from segments.views import unsubscribe

admin.site.site_header = "Salvo"
admin.site.site_title = "Salvo"
admin.site.index_title = "Campaigns, audiences and channels"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("unsubscribe/<str:token>/", unsubscribe, name="unsubscribe"),
]
