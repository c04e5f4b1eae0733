"""Who may call the REST API (kept apart from views: DRF imports it while loading them)."""

from typing import Any

from django.conf import settings
from rest_framework import permissions
from rest_framework.request import Request


class ModelPermissions(permissions.DjangoModelPermissions):
    """Django's model permissions, reads included: reading needs the `view_` permission."""

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }


class ApiDocsAccess(permissions.BasePermission):
    """The OpenAPI schema and its docs page: any signed-in user (they describe the API and
    reveal no data), anyone when SALVO_API_DOCS_PUBLIC publishes them."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return settings.SALVO_API_DOCS_PUBLIC or bool(
            request.user and request.user.is_authenticated
        )
