"""Who may do what: the check every service runs, and the REST API's permission class.

The services check the permissions of what they change or reveal (``require_perms``), so
that the admin, the API and the commands refuse alike; each door translates the
``PermissionDenied`` (403, an admin message, a command error).

Kept apart from views: DRF imports this module while loading them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from rest_framework import permissions
from rest_framework.request import Request


def require_perms(user: Any, *perms: str, to: str) -> None:
    """Raise ``PermissionDenied`` naming every permission ``user`` lacks for ``to`` (what
    the caller was about to do, e.g. "preview a segment's members"). ``user=None`` is the
    system itself (scheduler, tasks, staff commands without ``--user``): always allowed."""
    if user is None:
        return
    missing = [perm for perm in perms if not user.has_perm(perm)]
    if missing:
        named = " and ".join(f"“{perm}”" for perm in missing)
        plural = "s" if len(missing) > 1 else ""
        raise PermissionDenied(f"You need the {named} permission{plural} to {to}.")


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
