"""The admin's Preferences page (a link among the user tools, beside "Change password"):
the signed-in user's own time zone. Any staff user may set their own; the page changes
nothing else and nobody else's."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from .forms import error_dict
from .models import UserPreference, time_zone_choices
from .preferences import user_preference_set, user_time_zone


class PreferencesForm(forms.Form):
    time_zone = forms.ChoiceField(
        label="Time zone",
        choices=time_zone_choices,
        help_text=UserPreference._meta.get_field("time_zone").help_text,
    )


def preferences_page(admin_site: Any, request: HttpRequest) -> HttpResponse:
    """Shows the user's time zone (the site's until they choose one) and saves their choice
    through `user_preference_set`; a zone that is not offered is an error on the field."""
    if request.method == "POST":
        form = PreferencesForm(request.POST)
        if form.is_valid():
            try:
                user_preference_set(user=request.user, time_zone=form.cleaned_data["time_zone"])
            except ValidationError as error:
                for field, field_messages in error_dict(error).items():
                    form.add_error(field if field in form.fields else None, field_messages)
            else:
                messages.success(request, "Your preferences were saved.")
                return HttpResponseRedirect(reverse("admin:preferences"))
    else:
        form = PreferencesForm(initial={"time_zone": user_time_zone(user=request.user).key})
    context = {
        **admin_site.each_context(request),
        "title": "Preferences",
        "form": form,
    }
    return TemplateResponse(request, "admin/preferences.html", context)
