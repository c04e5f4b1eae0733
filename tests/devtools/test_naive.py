"""The benchmark's naive baseline: one recipient loaded, rendered, sent to a provider (the
local sinks) and saved as one row; and its task, known by name to a real worker."""

import pytest
from django.test import override_settings

from campaigns.choices import DeliveryStatus
from campaigns.models import Delivery
from devtools.naive import naive_execution_create, naive_send_one
from devtools.sinks import running_sinks
from devtools.tasks import naive_delivery_task
from tests.campaigns.delivery_support import make_profile, sinks_and_worker
from tests.campaigns.factories import email_action, make_campaign, sms_action
from tests.conftest import wait_until


@pytest.mark.django_db
def test_the_naive_baseline_sends_one_rendered_message_and_records_it_sent():
    profile = make_profile()
    campaign = make_campaign(
        actions=[email_action(), sms_action(body="Hi {{ profile.external_id }}")]
    )
    execution = naive_execution_create(campaign=campaign)
    sms = execution.version.actions.get(channel="sms")

    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        naive_send_one(execution_id=execution.pk, action_id=sms.pk, profile_id=profile.pk)

        [message] = sink.received()
    row = Delivery.objects.get(execution=execution)
    assert (message["channel"], message["to"]) == ("sms", profile.phone)
    assert message["json"]["text"] == f"Hi {profile.external_id}"
    assert (row.status, row.action_id, row.profile_id) == (
        DeliveryStatus.SENT,
        sms.pk,
        profile.pk,
    )
    assert (message["delivery_id"], message["message_id"]) == (
        str(row.pk),
        row.provider_message_id,
    )


@pytest.mark.worker
def test_a_worker_runs_the_naive_task_queued_by_its_name(celery_process_factory):
    profile = make_profile()
    campaign = make_campaign(actions=[sms_action()])
    execution = naive_execution_create(campaign=campaign)
    sms = execution.version.actions.get()

    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        naive_delivery_task.delay(execution.pk, sms.pk, profile.pk)

        [message] = sink.wait_for(1, channel="sms", timeout=60)
        sent = wait_until(
            lambda: Delivery.objects.filter(
                execution=execution, status=DeliveryStatus.SENT
            ).first(),
            timeout=60,
            message="the naive delivery was never recorded sent",
        )
    assert (message["to"], message["delivery_id"]) == (profile.phone, str(sent.pk))
