"""Two schedulers (beat on two machines) tick at once: whatever one of them read, the
other's work is never done twice. Each tick's steps lock or claim what they change; these
tests replay the interleaving in which both read the same state before either wrote."""

import datetime as dt

import pytest
from django.utils import timezone

from campaigns import selectors
from campaigns.delivery import completion
from campaigns.models import Execution
from tests.campaigns.delivery_support import planned_audience


@pytest.mark.django_db
def test_a_stalled_execution_is_resumed_by_one_scheduler_only(monkeypatch):
    execution = planned_audience("stall", 12)
    now = timezone.now()
    long_ago = now - dt.timedelta(hours=1)
    Execution.objects.filter(pk=execution.pk).update(last_progress_at=long_ago)

    # Both schedulers list the stalled executions before either resumes one.
    seen_by_second = list(selectors.stalled_executions(now=now))
    assert [e.pk for e in seen_by_second] == [execution.pk]
    assert completion.executions_resume_stalled(now=now) == [execution.pk]

    monkeypatch.setattr(completion, "stalled_executions", lambda now: seen_by_second)
    later = now + dt.timedelta(seconds=1)
    assert completion.executions_resume_stalled(now=later) == []
    left = Execution.objects.values_list("last_progress_at", flat=True).get(pk=execution.pk)
    assert left is not None
    assert left < later  # the second scheduler wrote nothing
