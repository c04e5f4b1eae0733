"""The admin's home as a marketer sees it: Campaigns, Audience and Channels first, then
everything about the installation itself (users, groups, API tokens, tags) under one
"Settings" section, and a dashboard of the campaigns above them.

`config.apps.SalvoAdminConfig` makes this the default admin site, so every
`@admin.register` of the apps lands here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IS_POPUP_VAR
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils.text import capfirst

from campaigns.admin_preferences import preferences_page
from campaigns.selectors import campaign_dashboard

# The apps a marketer works in, in the order of their day; every other app's models go
# under "Settings".
WORK_APPS = ("campaigns", "segments", "channels")
SETTINGS_LABEL = "settings"


class SalvoAdminSite(admin.AdminSite):
    # Its titles are set in config/urls.py, as they were on Django's default site.
    index_template = "admin/salvo_index.html"

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        apps = self._build_app_dict(request)
        sections = [apps.pop(label) for label in WORK_APPS if label in apps]
        settings_models = [model for app in apps.values() for model in app["models"]]
        if settings_models:
            sections.append(
                {
                    "name": "Settings",
                    "app_label": SETTINGS_LABEL,
                    "app_url": reverse("admin:settings_index", current_app=self.name),
                    "has_module_perms": True,
                    "models": settings_models,
                }
            )
        for section in sections:
            section["models"].sort(key=lambda model: model["name"])
        if app_label is not None:
            return [section for section in sections if section["app_label"] == app_label]
        return sections

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path(
                f"{SETTINGS_LABEL}/",
                self.admin_view(self.settings_index),
                name="settings_index",
            ),
            path(
                "preferences/",
                self.admin_view(self.preferences),
                name="preferences",
            ),
            *super().get_urls(),
        ]

    def settings_index(self, request: HttpRequest) -> HttpResponse:
        """The Settings section's page, like an app's page (404 to whoever sees none of
        its models)."""
        return self.app_index(request, SETTINGS_LABEL)

    def preferences(self, request: HttpRequest) -> HttpResponse:
        """The signed-in user's own preferences (campaigns.admin_preferences)."""
        return preferences_page(self, request)

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        extra_context = dict(extra_context or {})
        user = request.user
        if user.has_perm("campaigns.view_campaign") or user.has_perm("campaigns.change_campaign"):
            extra_context["salvo_dashboard"] = campaign_dashboard()
        return super().index(request, extra_context)


class ListTitledAdmin(admin.ModelAdmin):
    """A list titled by what it lists ("Campaigns"), not Django's "Select campaign to
    change"; the pop-up that picks a related object keeps Django's "Select …", which is then
    what the page asks."""

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        if IS_POPUP_VAR not in request.GET:
            title = capfirst(str(self.opts.verbose_name_plural))
            extra_context = {"title": title, **(extra_context or {})}
        return super().changelist_view(request, extra_context)
