"""The scheduling clock (campaigns.clock): moved by a test's file, never in production."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from campaigns import clock
from tests.settings_loader import PRODUCTION_REQUIRED, PRODUCTION_URLS, load_settings, refusal


def test_the_clock_runs_ahead_by_what_the_file_says(settings, tmp_path):
    path = tmp_path / "clock"
    assert abs(clock.now() - timezone.now()) < dt.timedelta(seconds=1)

    settings.SALVO_TEST_CLOCK_FILE = str(path)
    assert abs(clock.now() - timezone.now()) < dt.timedelta(seconds=1)  # no file yet: zero
    clock.clock_set(path, ahead=dt.timedelta(days=3))
    assert abs(clock.now() - timezone.now() - dt.timedelta(days=3)) < dt.timedelta(seconds=1)


def test_a_clock_file_is_refused_unless_debug_is_on(tmp_path):
    production = {**PRODUCTION_URLS, **PRODUCTION_REQUIRED, "SALVO_TEST_CLOCK_FILE": "/tmp/c"}
    assert "SALVO_TEST_CLOCK_FILE" in refusal(production, tmp_path)
    embedded_off = {"DJANGO_DEBUG": "0", "SALVO_TEST_CLOCK_FILE": "/tmp/c"}
    assert "needs DJANGO_DEBUG=1" in refusal(embedded_off, tmp_path)

    allowed = load_settings({"DJANGO_DEBUG": "1", "SALVO_TEST_CLOCK_FILE": "/tmp/c"}, tmp_path)
    assert allowed["DEBUG"] is True
