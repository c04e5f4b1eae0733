"""Celery tasks of the development tools (autodiscovered: ``devtools`` is an installed app
wherever it is importable)."""

from celery import shared_task
from django.conf import settings


# The name it always had (in campaigns.tasks), so a message queued before the move still
# finds it. It sends, so it has the time limits of the engine's batches (and the benchmark
# queues it where they go, settings.SALVO_DELIVERY_QUEUE).
@shared_task(
    name="campaigns.tasks.naive_delivery_task",
    acks_late=True,
    soft_time_limit=settings.SALVO_DELIVERY_TASK_SOFT_LIMIT_S,
    time_limit=settings.SALVO_DELIVERY_TASK_HARD_LIMIT_S,
)
def naive_delivery_task(execution_id: int, action_id: int, profile_id: int) -> None:
    """The benchmark's baseline: one task per recipient that renders, sends and saves one
    row (see devtools.naive)."""
    from devtools.naive import naive_send_one

    naive_send_one(execution_id=execution_id, action_id=action_id, profile_id=profile_id)
