"""Fixtures of the campaign tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings

from devtools.sinks import RunningSinks, running_sinks


@pytest.fixture
def local_sinks() -> Iterator[RunningSinks]:
    """The local sinks, accepting everything, as every channel's provider for the test (the
    engine's steps run in the test process, or in the live server's thread)."""
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


@pytest.fixture
def refusing_sinks() -> Iterator[RunningSinks]:
    """The local sinks as every channel's provider, refusing for good any message to
    "invalid@example.com" (and other addresses starting with "invalid")."""
    with running_sinks(reject="invalid") as sink, override_settings(**sink.provider_settings()):
        yield sink
