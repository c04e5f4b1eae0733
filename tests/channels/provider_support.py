"""What the tests of one provider's backend share: the sink a module sends to, whose
emulation of the provider refuses, fails and throttles the addresses that name a word;
outbound messages, each with a delivery id of its own; and a preset's backend."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from channels.providers import OutboundMessage, get_backend
from devtools.sinks import RunningSinks, running_sinks
from tests.channels.factories import MessagePresetFactory

Backend = TypeVar("Backend")

# Far above the ids the database hands out, so that no message names a stored delivery.
_delivery_ids = itertools.count(3_000_000)


def module_sink(*, reject: str, **options: Any) -> Callable[[], Iterator[RunningSinks]]:
    """A module-scoped ``sink`` fixture: addresses with `reject` in them are refused as the
    provider refuses them, ``flaky`` ones fail and ``throttled`` ones are throttled 5
    times; `options` are ``running_sinks``' others (a Retry-After, slow answers…)."""

    @pytest.fixture(scope="module")
    def sink() -> Iterator[RunningSinks]:
        with running_sinks(
            reject=reject, flaky="flaky", throttle="throttled", throttle_times=5, **options
        ) as running:
            yield running

    return sink


def outbound(
    channel: str, to: str, *, subject: str = "", body: str = "Hello", **fields: Any
) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=next(_delivery_ids),
        channel=channel,
        to=to,
        subject=subject,
        body=body,
        **fields,
    )


def preset_backend(
    channel: str, backend: str, kind: type[Backend], **preset_fields: Any
) -> Backend:
    """The backend a preset of `channel` naming `backend` sends with, checked to be `kind`."""
    preset = MessagePresetFactory.build(channel=channel, backend=backend, **preset_fields)
    found = get_backend(preset)
    assert isinstance(found, kind)
    return found
