from urllib.parse import urlsplit

from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from segments.views import unsubscribe

admin.site.site_header = "Salvo"
admin.site.site_title = "Salvo"
admin.site.index_title = "Campaigns, audiences and channels"


def _swagger_ui_policy() -> dict[str, list[str]]:
    """What the API docs page adds to the Content-Security-Policy: the origin Swagger UI is
    loaded from (drf-spectacular's SWAGGER_UI_DIST, a CDN by default; nothing when this server
    serves it), and the page's small inline <style>, which drf-spectacular writes without a
    nonce. Its script comes from this server: the split view serves it at `?script`."""
    files = (spectacular_settings.SWAGGER_UI_DIST, spectacular_settings.SWAGGER_UI_FAVICON_HREF)
    origins = sorted({f"{u.scheme}://{u.netloc}" for u in map(urlsplit, files) if u.netloc})
    return {"script-src": origins, "style-src": [*origins, UNSAFE_INLINE], "img-src": origins}


api_docs = csp_update(_swagger_ui_policy())(SpectacularSwaggerSplitView.as_view(url_name="schema"))

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", api_docs, name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("unsubscribe/<str:token>/", unsubscribe, name="unsubscribe"),
]
